#!/usr/bin/env bash
# Compile check of the SoCD CUDA backend on a machine without a GPU (run from anywhere; CI runs
# it from the repository root):
#   1. nvcc compiles socd_cuda.cu (kernel + launcher, no torch) for sm_80 and sm_90 and prints
#      ptxas' resource usage per kernel; fails on any error, any compiler warning, and any
#      register spill or stack frame (a kernel that no longer fits its 64-register budget);
#   2. syntax check of the torch binding socd_binding.cpp with the host compiler, when torch is
#      importable and ships the c10/cuda headers (skipped otherwise);
#   3. the CPU emulation test of the kernel's device logic (emu/run_emu_test.sh quick).
# Without nvcc the whole check is skipped (exit 0) unless DETOX_REQUIRE_NVCC=1.
# DETOX_SKIP_EMU=1 skips step 3.
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
  if [[ "${DETOX_REQUIRE_NVCC:-0}" == "1" ]]; then
    echo "compile_check: nvcc not found (DETOX_REQUIRE_NVCC=1)" >&2
    exit 1
  fi
  echo "compile_check: SKIP (nvcc not found; set CUDA_HOME or NVCC)"
  exit 0
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
status=0

echo "== 1. nvcc $("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'): socd_cuda.cu for sm_80, sm_90"
set +e
# The flags of setup.py's CUDAExtension build, including torch's default -D__CUDA_NO_HALF_*.
"$NVCC" -std=c++17 -O3 -I"$CSRC" -DDETOX_WITH_CUDA --expt-relaxed-constexpr -lineinfo \
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
  -D__CUDA_NO_HALF2_OPERATORS__ -Xcompiler -fPIC \
  -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 --threads 2 \
  -Xptxas -v -Xcompiler -Wall,-Wextra -c "$HERE/socd_cuda.cu" -o "$TMP/socd_cuda.o" >"$TMP/nvcc.log" 2>&1
rc=$?
set -e
# ptxas -v lines: "Compiling entry function 'NAME' for 'sm_XX'", then "N bytes stack frame, N bytes
# spill stores, N bytes spill loads" and "Used N registers, ... N bytes smem".
awk '
  /Compiling entry function/ {
    name = $0; sub(/.*function \x27/, "", name); sub(/\x27.*/, "", name)
    arch = $0; sub(/.*for \x27/, "", arch); sub(/\x27.*/, "", arch)
    t = "?"; if (name ~ /kernelIf/) t = "f32"; else if (name ~ /half_t/) t = "f16"; else if (name ~ /bfloat16_t/) t = "bf16"
    ve = name; sub(/EEEv.*/, "", ve); sub(/.*Li/, "", ve)
    path = (name ~ /cluster/) ? "cluster" : "single "
    cur = sprintf("%-6s %s %-5s VE=%-2s", arch, path, t, ve)
  }
  /spill stores/ { split($0, a, " "); stack = a[1] + 0; spill = a[5] + 0; sfill = a[9] + 0 }
  /Used [0-9]+ registers/ {
    match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
    smem = "0"; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11)
    printf "   %s  registers %3s  smem %6s B  stack %s B  spill st/ld %s/%s B\n", cur, regs, smem, stack, spill, sfill
  }' "$TMP/nvcc.log"
if [[ $rc -ne 0 ]]; then
  echo "FAIL: nvcc exited with $rc"; cat "$TMP/nvcc.log"; status=1
fi
if grep -qi "warning" "$TMP/nvcc.log"; then
  echo "FAIL: compiler warnings:"; grep -i -A3 "warning" "$TMP/nvcc.log"; status=1
fi
if grep -Eq "([1-9][0-9]* bytes stack frame|[1-9][0-9]* bytes spill)" "$TMP/nvcc.log"; then
  echo "FAIL: a kernel spills registers or uses a stack frame (see above)"; status=1
fi
n_kernels=$(grep -c "Compiling entry function" "$TMP/nvcc.log" || true)
if [[ $rc -eq 0 && "$n_kernels" -ne 24 ]]; then
  echo "FAIL: expected 24 kernels (2 paths x 3 dtypes x 2 widths x 2 archs), ptxas compiled $n_kernels"; status=1
fi
[[ $status -eq 0 ]] && echo "   OK ($n_kernels kernels)"

echo "== 2. torch binding (host compiler, syntax only)"
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
  # CPU builds of torch ship c10/cuda without the generated cuda_cmake_macros.h.
  if [[ ! -f "$TORCH_DIR/include/c10/cuda/impl/cuda_cmake_macros.h" ]]; then
    printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$TMP/stub/c10/cuda/impl/cuda_cmake_macros.h"
  fi
  if "${CXX:-g++}" -std=c++17 -fsyntax-only -Wall -Wextra -DDETOX_WITH_CUDA -I"$TMP/stub" \
      -isystem "$TORCH_DIR/include" -isystem "$TORCH_DIR/include/torch/csrc/api/include" \
      -isystem "$CUDA_INC" -I"$CSRC" "$HERE/socd_binding.cpp" >"$TMP/bind.log" 2>&1 && \
      ! grep -qi "warning" "$TMP/bind.log"; then
    echo "   OK (torch $("$PY" -c 'import torch; print(torch.__version__)'))"
  else
    echo "FAIL: socd_binding.cpp"; cat "$TMP/bind.log"; status=1
  fi
fi

echo "== 3. CPU emulation of the kernel's device logic"
if [[ "${DETOX_SKIP_EMU:-0}" == "1" ]]; then
  echo "   SKIP (DETOX_SKIP_EMU=1)"
elif ! bash "$HERE/emu/run_emu_test.sh" quick >"$TMP/emu.log" 2>&1; then
  echo "FAIL: emulation test"; cat "$TMP/emu.log"; status=1
else
  sed -n 's/^emulated CUDA SoCD: /   /p; s/^\([0-9]* passed, [0-9]* failed\)$/   emulation: \1/p' "$TMP/emu.log"
fi

echo "== reversal: compile_check_reversal.sh"
bash "$HERE/compile_check_reversal.sh" || status=1
echo "== 4. SASA: nvcc sasa_cuda.cu for sm_80, sm_90; sasa_binding.cpp syntax"
set +e
"$NVCC" -std=c++17 -O3 -I"$CSRC" -DDETOX_WITH_CUDA --expt-relaxed-constexpr -lineinfo \
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
  -D__CUDA_NO_HALF2_OPERATORS__ -Xcompiler -fPIC \
  -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 --threads 2 \
  -Xptxas -v -Xcompiler -Wall,-Wextra -c "$HERE/sasa_cuda.cu" -o "$TMP/sasa_cuda.o" >"$TMP/sasa_nvcc.log" 2>&1
rc=$?
set -e
n_sasa=$(grep -c "Compiling entry function" "$TMP/sasa_nvcc.log" || true)
if [[ $rc -ne 0 ]]; then
  echo "FAIL: nvcc sasa_cuda.cu exited with $rc"; cat "$TMP/sasa_nvcc.log"; status=1
elif grep -qi "warning" "$TMP/sasa_nvcc.log"; then
  echo "FAIL: compiler warnings in sasa_cuda.cu:"; grep -i -A3 "warning" "$TMP/sasa_nvcc.log"; status=1
elif grep -Eq "([1-9][0-9]* bytes stack frame|[1-9][0-9]* bytes spill)" "$TMP/sasa_nvcc.log"; then
  echo "FAIL: a SASA kernel spills registers or uses a stack frame"; grep -E "registers|spill" "$TMP/sasa_nvcc.log"; status=1
elif [[ "$n_sasa" -ne 18 ]]; then
  echo "FAIL: expected 18 SASA kernels (3 logits x 3 hidden dtypes x 2 archs), ptxas compiled $n_sasa"; status=1
else
  regs=$(grep -o "Used [0-9]* registers" "$TMP/sasa_nvcc.log" | awk '{print $2}' | sort -n | tail -1)
  echo "   OK ($n_sasa kernels, at most $regs registers, no spills)"
fi
if [[ -z "$TORCH_DIR" || ! -f "$TORCH_DIR/include/c10/cuda/CUDAGuard.h" || -z "$CUDA_INC" ]]; then
  echo "   binding: SKIP (needs an importable torch with c10/cuda headers and the CUDA runtime headers)"
elif "${CXX:-g++}" -std=c++17 -fsyntax-only -Wall -Wextra -DDETOX_WITH_CUDA -I"$TMP/stub" \
    -isystem "$TORCH_DIR/include" -isystem "$TORCH_DIR/include/torch/csrc/api/include" \
    -isystem "$CUDA_INC" -I"$CSRC" "$HERE/sasa_binding.cpp" >"$TMP/sasa_bind.log" 2>&1 && \
    ! grep -qi "warning" "$TMP/sasa_bind.log"; then
  echo "   binding: OK"
else
  echo "FAIL: sasa_binding.cpp"; cat "$TMP/sasa_bind.log"; status=1
fi

if [[ $status -eq 0 ]]; then echo "compile_check: OK"; else echo "compile_check: FAILED"; fi
exit $status
