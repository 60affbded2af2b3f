// Parameters and the per-row logic shared by the SASA re-weighting kernels (CPU and CUDA).
// Free of torch headers. Semantics: detox_kernels/reference/sasa.py (the kernel contract).
#pragma once

#include <cstdint>

#include "socd_params.h"  // DETOX_HD, half_t / bfloat16_t, to_float / from_float

namespace detox {

// Re-weighting modes; the order is part of the op schema (see detox_kernels/sasa.py).
enum class SasaMode : int32_t { Softmax = 0, Tilt = 1 };

struct SasaParams {
  int64_t rows;            // B
  int64_t vocab;           // V: width of the logits; ids outside [0, V) do not take part
  int64_t k;               // K candidates per row
  int64_t d;               // D hidden size
  int64_t logits_stride;   // row stride of the logits (elements; last dim contiguous)
  int64_t ids_stride;      // row stride of ids (int64)
  int64_t hidden_stride_b; // strides of hidden [B, K, D] (last dim contiguous)
  int64_t hidden_stride_k;
  int64_t valid_stride;    // row stride of valid (bool), when has_valid
  int64_t margins_stride;  // row stride of margins [B, K] float32
  int32_t mode;            // SasaMode
  bool has_valid;
};

// Does candidate k of a row take part (contract item 2)?
DETOX_HD bool sasa_takes_part(const int64_t* ids, const bool* valid, int64_t k, int64_t vocab) {
  const int64_t id = ids[k];
  return id >= 0 && id < vocab && (valid == nullptr || valid[k]);
}

}  // namespace detox
