#!/usr/bin/env bash
# Compile check of the toxification-reversal CUDA backend on a machine without a GPU (called by
# compile_check.sh; runnable alone): nvcc compiles reversal_cuda.cu (kernel + launcher, no
# torch) for sm_80 and sm_90 with the flags of setup.py and fails on any error, warning,
# register spill or stack frame; then a syntax check of reversal_binding.cpp with the host
# compiler when torch ships the c10/cuda headers. Skipped (exit 0) without nvcc unless
# DETOX_REQUIRE_NVCC=1.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CSRC="$(cd "$HERE/.." && pwd)"
NVCC="${NVCC:-}"
if [[ -z "$NVCC" ]]; then
  if command -v nvcc >/dev/null 2>&1; then NVCC=nvcc
  elif [[ -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then NVCC="$CUDA_HOME/bin/nvcc"
  elif [[ -x /usr/local/cuda/bin/nvcc ]]; then NVCC=/usr/local/cuda/bin/nvcc
  fi
fi
if [[ -z "$NVCC" ]]; then
  if [[ "${DETOX_REQUIRE_NVCC:-0}" == "1" ]]; then echo "compile_check_reversal: nvcc not found" >&2; exit 1; fi
  echo "compile_check_reversal: SKIP (nvcc not found)"; exit 0
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
status=0
echo "== reversal: nvcc reversal_cuda.cu for sm_80, sm_90"
set +e
"$NVCC" -std=c++17 -O3 -I"$CSRC" -DDETOX_WITH_CUDA --expt-relaxed-constexpr -lineinfo \
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
  -D__CUDA_NO_HALF2_OPERATORS__ -Xcompiler -fPIC \
  -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 --threads 2 \
  -Xptxas -v -Xcompiler -Wall,-Wextra -c "$HERE/reversal_cuda.cu" -o "$TMP/reversal_cuda.o" >"$TMP/nvcc.log" 2>&1
rc=$?
set -e
grep -E "Compiling entry function|Used [0-9]+ registers|spill" "$TMP/nvcc.log" | sed 's/^ptxas info *: /   /' || true
if [[ $rc -ne 0 ]]; then echo "FAIL: nvcc exited with $rc"; cat "$TMP/nvcc.log"; status=1; fi
if grep -qi "warning" "$TMP/nvcc.log"; then echo "FAIL: compiler warnings:"; grep -i -A3 "warning" "$TMP/nvcc.log"; status=1; fi
if grep -Eq "([1-9][0-9]* bytes stack frame|[1-9][0-9]* bytes spill)" "$TMP/nvcc.log"; then
  echo "FAIL: a kernel spills registers or uses a stack frame"; status=1
fi
n_kernels=$(grep -c "Compiling entry function" "$TMP/nvcc.log" || true)
if [[ $rc -eq 0 && "$n_kernels" -ne 6 ]]; then
  echo "FAIL: expected 6 kernels (3 dtypes x 2 archs), ptxas compiled $n_kernels"; status=1
fi
[[ $status -eq 0 ]] && echo "   OK ($n_kernels kernels)"

echo "== reversal: torch binding (host compiler, syntax only)"
PY="${PYTHON:-python3}"
TORCH_DIR="$("$PY" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null || true)"
CUDA_INC=""
NVCC_PATH="$(readlink -f "$(command -v "$NVCC" || echo "$NVCC")")"
for d in "${CUDA_HOME:-/nonexistent}/include" "$(dirname "$NVCC_PATH")/../include" /usr/local/cuda/include; do
  if [[ -f "$d/cuda_runtime.h" ]]; then CUDA_INC="$(cd "$d" && pwd)"; break; fi
done
if [[ -z "$TORCH_DIR" || ! -f "$TORCH_DIR/include/c10/cuda/CUDAGuard.h" || -z "$CUDA_INC" ]]; then
  echo "   SKIP (needs an importable torch with c10/cuda headers and the CUDA runtime headers)"
else
  mkdir -p "$TMP/stub/c10/cuda/impl"
  if [[ ! -f "$TORCH_DIR/include/c10/cuda/impl/cuda_cmake_macros.h" ]]; then
    printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$TMP/stub/c10/cuda/impl/cuda_cmake_macros.h"
  fi
  if "${CXX:-g++}" -std=c++17 -fsyntax-only -Wall -Wextra -DDETOX_WITH_CUDA -I"$TMP/stub" \
      -isystem "$TORCH_DIR/include" -isystem "$TORCH_DIR/include/torch/csrc/api/include" \
      -isystem "$CUDA_INC" -I"$CSRC" "$HERE/reversal_binding.cpp" >"$TMP/bind.log" 2>&1 && \
      ! grep -qi "warning" "$TMP/bind.log"; then
    echo "   OK"
  else
    echo "FAIL: reversal_binding.cpp"; cat "$TMP/bind.log"; status=1
  fi
fi
if [[ $status -eq 0 ]]; then echo "compile_check_reversal: OK"; else echo "compile_check_reversal: FAILED"; fi
exit $status
