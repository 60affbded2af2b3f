# Sourced by the one-call GPU scripts (bench/gpu_run.sh, bench/gpu_decode.sh) with OUT set: records
# the GPU, the versions and the commit in $OUT/env.txt, then builds the CUDA extension against the
# machine's torch (log in $OUT/build.log); exits the calling script if the build fails.
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
