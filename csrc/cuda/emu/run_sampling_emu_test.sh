#!/usr/bin/env bash
# Builds the CPU emulation of the fused sampling CUDA kernel (sampling_emu_test.cpp) and runs its
# smoke test against the C++ CPU kernel. Needs only a C++20 host compiler; no GPU, no CUDA toolkit.
# Usage (from anywhere): bash csrc/cuda/emu/run_sampling_emu_test.sh [--build-only OUT_BINARY]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CXX="${CXX:-g++}"
if [[ "${1:-}" == "--build-only" ]]; then
  "$CXX" -std=c++20 -O2 -fopenmp-simd -Wall -Wextra -Wno-unused-parameter -I"$HERE/../.." "$HERE/sampling_emu_test.cpp" -o "$2"
  exit 0
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$CXX" -std=c++20 -O2 -fopenmp-simd -Wall -Wextra -Wno-unused-parameter -I"$HERE/../.." "$HERE/sampling_emu_test.cpp" \
  -o "$TMP/sampling_emu_test"
"$TMP/sampling_emu_test"
