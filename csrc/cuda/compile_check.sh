#!/usr/bin/env bash
# Compile check of the CUDA backends on a machine without a GPU (run from anywhere; CI runs it
# from the repository root). For each of SoCD, reversal, SASA and sampling (check_cuda_backend in
# compile_lib.sh):
#   - nvcc compiles the torch-free <op>_cuda.cu (kernel + launcher) for sm_80 and sm_90 with the
#     flags of setup.py; fails on any error, any compiler warning, any register spill or stack
#     frame (a kernel that no longer fits its register budget) and another number of kernels;
#   - syntax check of the torch binding <op>_binding.cpp with the host compiler, when torch is
#     importable and ships the c10/cuda headers (skipped otherwise).
# Then the CPU emulation tests of the SoCD and sampling kernels' device logic (emu/run_emu_test.sh
# quick, emu/run_sampling_emu_test.sh).
# Without nvcc the whole check is skipped (exit 0) unless DETOX_REQUIRE_NVCC=1.
# DETOX_SKIP_EMU=1 skips the emulation test.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CSRC="$(cd "$HERE/.." && pwd)"
# shellcheck source=compile_lib.sh
. "$HERE/compile_lib.sh"
find_nvcc compile_check
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
status=0

# SoCD's ptxas resource usage as a table, one line per kernel. ptxas -v lines: "Compiling entry
# function 'NAME' for 'sm_XX'", then "N bytes stack frame, N bytes spill stores, N bytes spill
# loads" and "Used N registers, ... N bytes smem".
socd_ptxas_table() {
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
    }' "$1"
}

check_cuda_backend "1. SoCD" socd_cuda.cu 24 "2 paths x 3 dtypes x 2 widths x 2 archs" socd_binding.cpp \
  socd_ptxas_table || status=1

echo "== 2. SoCD: CPU emulation of the kernel's device logic"
if [[ "${DETOX_SKIP_EMU:-0}" == "1" ]]; then
  echo "   SKIP (DETOX_SKIP_EMU=1)"
elif ! bash "$HERE/emu/run_emu_test.sh" quick >"$TMP/emu.log" 2>&1; then
  echo "FAIL: emulation test"; cat "$TMP/emu.log"; status=1
else
  sed -n 's/^emulated CUDA SoCD: /   /p; s/^\([0-9]* passed, [0-9]* failed\)$/   emulation: \1/p' "$TMP/emu.log"
fi

check_cuda_backend "3. reversal" reversal_cuda.cu 6 "3 dtypes x 2 archs" reversal_binding.cpp ptxas_lines || status=1
check_cuda_backend "4. SASA" sasa_cuda.cu 18 "3 logits x 3 hidden dtypes x 2 archs" sasa_binding.cpp || status=1
check_cuda_backend "5. sampling" sampling_cuda.cu 6 "3 dtypes x 2 archs" sampling_binding.cpp ptxas_lines || status=1

echo "== 6. sampling: CPU emulation of the kernel's device logic"
if [[ "${DETOX_SKIP_EMU:-0}" == "1" ]]; then
  echo "   SKIP (DETOX_SKIP_EMU=1)"
elif ! bash "$HERE/emu/run_sampling_emu_test.sh" >"$TMP/samp_emu.log" 2>&1; then
  echo "FAIL: sampling emulation test"; cat "$TMP/samp_emu.log"; status=1
else
  tail -1 "$TMP/samp_emu.log" | sed 's/^/   /'
fi

if [[ $status -eq 0 ]]; then echo "compile_check: OK"; else echo "compile_check: FAILED"; fi
exit $status
