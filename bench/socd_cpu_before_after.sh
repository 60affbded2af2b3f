#!/usr/bin/env bash
# Before/after for the C++ CPU SoCD kernel: the same benchmark (bench/bench_socd.py) with an older
# build of detox_kernels._C and with this checkout's, alternating, several rounds; each run's
# ratios against eager-fp32 (torch.topk) are measured interleaved inside that run.
#   bash bench/socd_cpu_before_after.sh OLD_C.so [rounds] [bench_socd args...]
# e.g. OLD_C.so = the _C*.so of the main branch before this change. Results:
# $OUT_DIR (default bench/results/socd-cpu-before-after)/{before,after}-<round>.json and a printed table.
set -euo pipefail
old_so=$1; shift
rounds=${1:-3}; shift || true
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--vocabs 49152 --batches 1,8,64 --dtypes float32 --no-reference)
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py=${PYTHON:-python3}
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp -r "$root/detox_kernels" "$root/bench" "$tmp/"
rm -f "$tmp"/detox_kernels/_C*.so
cp "$old_so" "$tmp/detox_kernels/$(basename "$(ls "$root"/detox_kernels/_C*.so | head -1)")"
out="${OUT_DIR:-$root/bench/results/socd-cpu-before-after}"
mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  (cd "$tmp" && PYTHONPATH="$tmp:$root/python" DETOX_COMMIT="$(git -C "$root" rev-parse HEAD)" \
    "$py" -m bench.bench_socd "${args[@]}" --label before --out "$out/before-$r.json")
  (cd "$root" && PYTHONPATH="$root:$root/python" "$py" -m bench.bench_socd "${args[@]}" --label after \
    --out "$out/after-$r.json")
done
