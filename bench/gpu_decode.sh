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
. "$(dirname "$0")/gpu_setup.sh"   # env.txt (GPU, versions, commit), then the build
python3 -m pytest -q -p no:cacheprovider tests/test_fast_decode.py -k "cuda or fused" 2>&1 | tee "$OUT/tests.log" | tail -n 25
# the embedded pair only when asked (WEIGHTS=embedded): a machine without the toxic model would
# first train one
weights="--random-weights"; [ "${WEIGHTS:-random}" = embedded ] && weights=""
quick=""; [ -n "${QUICK:-}" ] && quick="--quick"
python3 -m bench.bench_decode --device cuda --dtype bfloat16 $weights $quick ${BENCH_ARGS:-} \
  --out "$OUT/decode-cuda.json" 2>&1 | tee "$OUT/bench-decode.log" | tail -n 40
DETOX_CUDA_GRAPHS=0 python3 -m bench.bench_decode --device cuda --dtype bfloat16 $weights $quick \
  --methods none,socd --variants fast --out "$OUT/decode-cuda-nographs.json" 2>&1 | tee "$OUT/bench-decode-nographs.log" | tail -n 12
