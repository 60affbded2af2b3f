#!/usr/bin/env bash
# Builds and runs the CPU emulation test of the SoCD CUDA kernel's device logic
# (socd_emu_test.cpp). Needs only a C++20 host compiler; no GPU, no CUDA toolkit.
# Usage (from anywhere): bash csrc/cuda/emu/run_emu_test.sh [quick]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CXX="${CXX:-g++}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$CXX" -std=c++20 -O2 -pthread -Wall -Wextra -Wno-unused-parameter -I"$HERE/../.." \
  "$HERE/socd_emu_test.cpp" -o "$TMP/socd_emu_test"
"$TMP/socd_emu_test" "$@"
