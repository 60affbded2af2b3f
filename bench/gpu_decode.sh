#!/usr/bin/env bash
# One call on a lent GPU machine: build the extension, run the fast-decoding tests on CUDA and
# bench_decode on CUDA in bf16 (CUDA graphs on), and leave logs, the GPU name, versions, the
# commit and the raw results under $OUT.
#   bash bench/gpu_decode.sh            # B = 1, 8, 64; 32 tokens
#   QUICK=1 bash bench/gpu_decode.sh    # B = 1, 8; 8 tokens
# By default SmolLM2-135M's architecture with random weights (--random-weights: the same step
# time; the embedded weights are usually not on the machine); WEIGHTS=embedded uses the real pair.
set -uo pipefail
OUT=${OUT:-bench/results/gpu-decode}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  echo "commit ${DETOX_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}"
} 2>&1 | tee "$OUT/env.txt"
t0=$(date +%s)
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
  python3 -m pip install -q --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1
rc=$?; echo "build rc=$rc in $(( $(date +%s) - t0 )) s"; tail -n 30 "$OUT/build.log"
[ $rc -eq 0 ] || exit $rc
python3 -m pytest -q -p no:cacheprovider tests/test_fast_decode.py -k "cuda or fused" 2>&1 | tee "$OUT/tests.log" | tail -n 25
# the embedded pair only when asked (WEIGHTS=embedded): a machine without the toxic model would
# first train one
weights="--random-weights"; [ "${WEIGHTS:-random}" = embedded ] && weights=""
quick=""; [ -n "${QUICK:-}" ] && quick="--quick"
python3 -m bench.bench_decode --device cuda --dtype bfloat16 $weights $quick ${BENCH_ARGS:-} \
  --out "$OUT/decode-cuda.json" 2>&1 | tee "$OUT/bench-decode.log" | tail -n 40
DETOX_CUDA_GRAPHS=0 python3 -m bench.bench_decode --device cuda --dtype bfloat16 $weights $quick \
  --methods none,socd --variants fast --out "$OUT/decode-cuda-nographs.json" 2>&1 | tee "$OUT/bench-decode-nographs.log" | tail -n 12
