#!/usr/bin/env bash
# Compile check of the toxification-reversal CUDA backend alone, on a machine without a GPU
# (compile_check.sh runs the same check, with the other backends): nvcc compiles
# reversal_cuda.cu (kernel + launcher, no torch) for sm_80 and sm_90 with the flags of setup.py
# and fails on any error, warning, register spill or stack frame; then a syntax check of
# reversal_binding.cpp with the host compiler when torch ships the c10/cuda headers. Skipped
# (exit 0) without nvcc unless DETOX_REQUIRE_NVCC=1. See check_cuda_backend in compile_lib.sh.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CSRC="$(cd "$HERE/.." && pwd)"
# shellcheck source=compile_lib.sh
. "$HERE/compile_lib.sh"
find_nvcc compile_check_reversal
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
status=0
check_cuda_backend reversal reversal_cuda.cu 6 "3 dtypes x 2 archs" reversal_binding.cpp ptxas_lines || status=1
if [[ $status -eq 0 ]]; then echo "compile_check_reversal: OK"; else echo "compile_check_reversal: FAILED"; fi
exit $status
