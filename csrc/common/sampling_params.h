// Parameters and scalar helpers shared by the fused top-k/top-p sampling kernels (CPU and CUDA).
// Free of torch headers. Semantics: the kernel contract in detox_kernels/reference/sampling.py.
#pragma once

#include <cstdint>

#include "socd_params.h"  // DETOX_HD, half_t / bfloat16_t, to_float, ordered_bits

namespace detox {

struct SamplingParams {
  int64_t rows;          // B
  int64_t vocab;         // V
  int64_t logits_stride; // row stride of the logits (elements; last dim contiguous)
  int64_t top_k;         // 0 (or >= V): off
  double top_p;          // >= 1: off
  float temperature;     // > 0
};

DETOX_HD bool sampling_top_k_on(const SamplingParams& p) { return p.top_k > 0 && p.top_k < p.vocab; }
DETOX_HD bool sampling_top_p_on(const SamplingParams& p) { return p.top_p < 1.0; }

// Contract item 1: the float32 score x = logit / temperature; NaN counts as -inf.
DETOX_HD float sampling_score(float logit, float temperature) {
  const float x = logit / temperature;
  return x != x ? -__builtin_huge_valf() : x;
}

// Inverse of ordered_bits (socd_params.h) on the keys it produces (-0.0 comes back as +0.0).
DETOX_HD float sampling_key_to_float(uint32_t k) {
  return bits_to_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// How many of the c tokens tied at the top-p cut-off value (each of mass e, mass G ranked above
// the first of them) are kept: those r = 0..c-1 with G + r*e < P, at least one (contract item 3).
DETOX_HD int64_t sampling_ties_kept(double P, double G, double e, int64_t c) {
  int64_t n;
  if (!(e > 0.0)) {
    n = G < P ? c : 0;
  } else {
    const double q = (P - G) / e;
    if (!(q > 0.0)) {
      n = 0;
    } else if (q >= static_cast<double>(c)) {
      n = c;
    } else {
      n = static_cast<int64_t>(q);
      if (static_cast<double>(n) < q) ++n;  // ceil
    }
  }
  return n < 1 ? 1 : n;
}

}  // namespace detox
