#!/usr/bin/env bash
# One call on a lent GPU machine: build the CUDA extension against the machine's torch,
# run the GPU tests and the benchmarks, and leave logs and raw results under $OUT.
#   bash bench/gpu_run.sh [tests|bench|all]     (default: all)
set -uo pipefail
what=${1:-all}
OUT=${OUT:-bench/results/gpu-run}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  git rev-parse HEAD 2>/dev/null || true
} 2>&1 | tee "$OUT/env.txt"
t0=$(date +%s)
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
  python3 -m pip install -q --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1
rc=$?; echo "build rc=$rc in $(( $(date +%s) - t0 )) s"; tail -n 30 "$OUT/build.log"
[ $rc -eq 0 ] || exit $rc
python3 -m detox_kernels.info 2>&1 | tee "$OUT/info.txt"
if [ "$what" = tests ] || [ "$what" = all ]; then
  python3 -m pytest -q -x -p no:cacheprovider ${GPU_TESTS:-tests/test_socd.py} 2>&1 | tee "$OUT/tests.log" | tail -n 25
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  for s in ${GPU_BENCH:-socd}; do
    python3 bench/bench_$s.py --device cuda ${BENCH_ARGS:-} --out "$OUT/$s-cuda.json" 2>&1 | tee "$OUT/bench-$s.log" | tail -n 40
  done
fi
if [ "$what" = profile ]; then
  ncu -k regex:socd --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis \
      --section LaunchStats --section Occupancy python3 bench/profile_socd.py ${PROFILE_SIZES:-64x151936 1x151936} \
      >"$OUT/ncu.txt" 2>&1
  DETOX_SOCD_CLUSTER=0 ncu -k regex:socd --section SpeedOfLight --section WarpStateStats \
      python3 bench/profile_socd.py 64x151936 >"$OUT/ncu-single.txt" 2>&1
  grep -E "socd|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\)|Stall|Warp Cycles|Registers|Achieved Occ|Block Size|Grid Size|Dynamic Shared" "$OUT/ncu.txt" "$OUT/ncu-single.txt" | head -120
fi
