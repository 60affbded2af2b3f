# Shared by compile_check.sh and compile_check_reversal.sh (sourced, not run): find nvcc, and
# check one CUDA backend: its torch-free .cu (kernel + launcher) compiled by nvcc for sm_80 and
# sm_90 with the flags of setup.py, then the syntax of its torch binding with the host compiler.
# The caller sets HERE (this directory), CSRC (csrc/) and TMP (a scratch directory).

# find_nvcc NAME: sets NVCC from $NVCC, PATH, $CUDA_HOME or /usr/local/cuda. Without nvcc it
# exits the calling script: 0 (skipped) or, with DETOX_REQUIRE_NVCC=1, 1. NAME prefixes the message.
find_nvcc() {
  NVCC="${NVCC:-}"
  if [[ -z "$NVCC" ]]; then
    if command -v nvcc >/dev/null 2>&1; then NVCC=nvcc
    elif [[ -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then NVCC="$CUDA_HOME/bin/nvcc"
    elif [[ -x /usr/local/cuda/bin/nvcc ]]; then NVCC=/usr/local/cuda/bin/nvcc
    fi
  fi
  if [[ -z "$NVCC" ]]; then
    if [[ "${DETOX_REQUIRE_NVCC:-0}" == "1" ]]; then
      echo "$1: nvcc not found (DETOX_REQUIRE_NVCC=1)" >&2
      exit 1
    fi
    echo "$1: SKIP (nvcc not found; set CUDA_HOME or NVCC)"
    exit 0
  fi
}

# ptxas_lines LOG: the ptxas -v lines (entry function, registers, spills), indented.
ptxas_lines() {
  grep -E "Compiling entry function|Used [0-9]+ registers|spill" "$1" | sed 's/^ptxas info *: /   /' || true
}

# Finds an importable torch with the c10/cuda headers and the CUDA runtime headers, once: sets
# PY, TORCH_DIR, TORCH_VERSION, CUDA_INC and returns 1 if the binding check cannot run here.
_binding_env() {
  if [[ -z "${_DETOX_BINDING_ENV:-}" ]]; then
    PY="${PYTHON:-python3}"
    TORCH_DIR="$("$PY" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null || true)"
    CUDA_INC=""
    local d nvcc_path
    nvcc_path="$(readlink -f "$(command -v "$NVCC" || echo "$NVCC")")"
    for d in "${CUDA_HOME:-/nonexistent}/include" "$(dirname "$nvcc_path")/../include" /usr/local/cuda/include; do
      if [[ -f "$d/cuda_runtime.h" ]]; then CUDA_INC="$(cd "$d" && pwd)"; break; fi
    done
    _DETOX_BINDING_ENV=no
    if [[ -n "$TORCH_DIR" && -f "$TORCH_DIR/include/c10/cuda/CUDAGuard.h" && -n "$CUDA_INC" ]]; then
      _DETOX_BINDING_ENV=yes
      TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__)')"
      mkdir -p "$TMP/stub/c10/cuda/impl"
      # CPU builds of torch ship c10/cuda without the generated cuda_cmake_macros.h.
      if [[ ! -f "$TORCH_DIR/include/c10/cuda/impl/cuda_cmake_macros.h" ]]; then
        printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$TMP/stub/c10/cuda/impl/cuda_cmake_macros.h"
      fi
    fi
  fi
  [[ "$_DETOX_BINDING_ENV" == "yes" ]]
}

# check_cuda_backend LABEL CU N_KERNELS KERNELS_WHAT BINDING [REPORT]
#   CU, BINDING: file names in this directory (e.g. socd_cuda.cu, socd_binding.cpp);
#   N_KERNELS: how many kernels ptxas must compile (all instantiations, both archs), described
#     by KERNELS_WHAT in the failure message (e.g. "3 dtypes x 2 archs");
#   REPORT: a command given the nvcc log that prints the per-kernel resource usage (e.g.
#     ptxas_lines); none by default.
# Fails (returns 1) on an nvcc error, any compiler warning, any register spill or stack frame
# (a kernel that no longer fits its register budget), another kernel count, or a binding that
# does not compile cleanly. The binding check is skipped without torch's c10/cuda headers.
check_cuda_backend() {
  local label="$1" cu="$2" n_expected="$3" what="$4" binding="$5" report="${6:-}"
  local log="$TMP/${cu%.cu}_nvcc.log" bind_log="$TMP/${binding%.cpp}.log" rc n regs status=0
  echo "== $label: nvcc $("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'): $cu for sm_80, sm_90"
  set +e
  # The flags of setup.py's CUDAExtension build, including torch's default -D__CUDA_NO_HALF_*.
  "$NVCC" -std=c++17 -O3 -I"$CSRC" -DDETOX_WITH_CUDA --expt-relaxed-constexpr -lineinfo \
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
    -D__CUDA_NO_HALF2_OPERATORS__ -Xcompiler -fPIC \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 --threads 2 \
    -Xptxas -v -Xcompiler -Wall,-Wextra -c "$HERE/$cu" -o "$TMP/${cu%.cu}.o" >"$log" 2>&1
  rc=$?
  set -e
  if [[ -n "$report" ]]; then "$report" "$log"; fi
  if [[ $rc -ne 0 ]]; then
    echo "FAIL: nvcc $cu exited with $rc"; cat "$log"; status=1
  fi
  if grep -qi "warning" "$log"; then
    echo "FAIL: compiler warnings in $cu:"; grep -i -A3 "warning" "$log"; status=1
  fi
  if grep -Eq "([1-9][0-9]* bytes stack frame|[1-9][0-9]* bytes spill)" "$log"; then
    echo "FAIL: a kernel of $cu spills registers or uses a stack frame"
    if [[ -z "$report" ]]; then grep -E "registers|spill" "$log"; fi
    status=1
  fi
  n=$(grep -c "Compiling entry function" "$log" || true)
  if [[ $rc -eq 0 && "$n" -ne "$n_expected" ]]; then
    echo "FAIL: expected $n_expected kernels in $cu ($what), ptxas compiled $n"; status=1
  fi
  if [[ $status -eq 0 ]]; then
    regs=$(grep -o "Used [0-9]* registers" "$log" | awk '{print $2}' | sort -n | tail -1)
    echo "   OK ($n kernels, at most $regs registers, no spills)"
  fi

  echo "== $label: torch binding $binding (host compiler, syntax only)"
  if ! _binding_env; then
    echo "   SKIP (needs an importable torch with c10/cuda headers and the CUDA runtime headers)"
  elif "${CXX:-g++}" -std=c++17 -fsyntax-only -Wall -Wextra -DDETOX_WITH_CUDA -I"$TMP/stub" \
      -isystem "$TORCH_DIR/include" -isystem "$TORCH_DIR/include/torch/csrc/api/include" \
      -isystem "$CUDA_INC" -I"$CSRC" "$HERE/$binding" >"$bind_log" 2>&1 && \
      ! grep -qi "warning" "$bind_log"; then
    echo "   OK (torch $TORCH_VERSION)"
  else
    echo "FAIL: $binding"; cat "$bind_log"; status=1
  fi
  return $status
}
