#!/usr/bin/env bash
# One call on a lent GPU machine: build the CUDA extension against the machine's torch,
# run the GPU tests and the benchmarks, and leave logs and raw results under $OUT.
#   bash bench/gpu_run.sh [tests|bench|all|profile|source]     (default: all)
# GPU_BENCH=socd (say) runs bench/bench_socd.py --device cuda instead of bench_socd_gpu.py.
# (from the repository root: the benchmarks run as modules of the bench package, python3 -m bench.<name>)
set -uo pipefail
what=${1:-all}
OUT=${OUT:-bench/results/gpu-run}
. "$(dirname "$0")/gpu_setup.sh"   # env.txt (GPU, versions, commit), then the build
python3 -m detox_kernels.info 2>&1 | tee "$OUT/info.txt"
# SoCD serving-grade run (bash bench/gpu_run.sh all: at most ~8 minutes on an H100, by the limits below): the GPU tests
# on the GPU backends only (the CPU backend is covered by CI), then bench_socd_gpu (CUDA vs Triton
# vs torch.topk, B in 1/8/64/256, V in 32000/49152/151936, fp32 and bf16) with the automatic
# cluster choice, then the CUDA backend alone with 8-CTA clusters and with the single-CTA path.
# Each step has a time limit so that one slow step cannot take the others' time.
if [ "$what" = tests ] || [ "$what" = all ]; then
  DETOX_TEST_BACKENDS=${DETOX_TEST_BACKENDS:-cuda,triton} timeout ${TEST_TIMEOUT:-190} \
    python3 -m pytest -q -x -p no:cacheprovider ${GPU_TESTS:-tests/test_socd.py tests/test_socd_kernel_paths.py} \
    2>&1 | tee "$OUT/tests.log" | tail -n 25
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  for s in ${GPU_BENCH:-socd_gpu}; do
    dev_arg="--device cuda"; [ "$s" = socd_gpu ] && dev_arg=""
    timeout ${BENCH_TIMEOUT:-150} python3 -m bench.bench_$s $dev_arg ${BENCH_ARGS:-} --out "$OUT/$s.json" 2>&1 \
      | tee "$OUT/bench-$s.log" | tail -n 40
  done
  if [ -z "${GPU_BENCH:-}" ]; then
    for c in 8 0; do
      DETOX_SOCD_CLUSTER=$c timeout ${BENCH_TIMEOUT_PATH:-45} python3 -m bench.bench_socd_gpu --backends cuda \
        --rep-ms 50 --out "$OUT/socd_gpu-cluster$c.json" 2>&1 | tee "$OUT/bench-socd_gpu-cluster$c.log" | tail -n 30
    done
  fi
fi
if [ "$what" = profile ]; then
  ncu -k regex:socd --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis \
      --section LaunchStats --section Occupancy python3 -m bench.profile_socd ${PROFILE_SIZES:-64x151936 1x151936} \
      >"$OUT/ncu.txt" 2>&1
  DETOX_SOCD_CLUSTER=0 ncu -k regex:socd --section SpeedOfLight --section WarpStateStats \
      python3 -m bench.profile_socd 64x151936 >"$OUT/ncu-single.txt" 2>&1
  grep -E "socd|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\)|Stall|Warp Cycles|Registers|Achieved Occ|Block Size|Grid Size|Dynamic Shared" "$OUT/ncu.txt" "$OUT/ncu-single.txt" | head -120
fi
if [ "$what" = source ]; then
  # Warp-stall samples per source line of the SoCD kernel (needs -lineinfo, which setup.py passes).
  for spec in ${PROFILE_SIZES:-1x151936 64x151936}; do
    ncu -k regex:socd --set full --import-source yes -f -o "$OUT/socd-$spec" python3 -m bench.profile_socd $spec >/dev/null 2>&1
    ncu -i "$OUT/socd-$spec.ncu-rep" --page source --csv --print-source cuda >"$OUT/src-$spec.csv" 2>&1
    python3 - "$OUT/src-$spec.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1], errors="replace")))
print(sys.argv[1], len(rows), "rows; header:", rows[0][:12] if rows else None)
hdr = rows[0] if rows else []
col = next((i for i, h in enumerate(hdr) if "Warp Stall Sampling (All" in h), None)
if col is None:
    print("\n".join(",".join(r[:8]) for r in rows[:15])); sys.exit()
def num(s):
    try: return float(s.replace(",", ""))
    except ValueError: return 0.0
tot = sum(num(r[col]) for r in rows[1:] if len(r) > col)
top = sorted((r for r in rows[1:] if len(r) > col), key=lambda r: -num(r[col]))[:30]
for r in top:
    print(f"{num(r[col]) / max(tot, 1):6.1%}  {r[0][:6]:>6}  {r[1].strip()[:110]}")
PY
  done
  rm -f "$OUT"/*.ncu-rep
fi
