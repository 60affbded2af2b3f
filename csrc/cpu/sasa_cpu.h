// SASA re-weighting on the CPU, one row at a time, free of torch headers (the binding in
// sasa_cpu.cpp parallelises over rows). Semantics: detox_kernels/reference/sasa.py.
//
// Per row: K margins (dot products of length D, float32), the masked softmax (or the tilt) over
// the candidates that take part, then one write per distinct id with the summed weight.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../common/sasa_params.h"

namespace detox {
namespace cpu {

template <typename T, typename H>
void sasa_row(T* logits, const int64_t* ids, const H* hidden, const float* direction, const float* midpoint,
              float beta, const bool* valid, float* margins, const SasaParams& p, std::vector<float>& weight) {
  const int64_t K = p.k, D = p.d;
  // 1. margins, float32; chunked float sums like the SoCD kernel so that the inner loop vectorises
  for (int64_t k = 0; k < K; ++k) {
    const H* h = hidden + k * p.hidden_stride_k;
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < D; ++j) acc += (to_float(h[j]) - midpoint[j]) * direction[j];
    margins[k] = acc;
  }
  // 2-3. weights over the candidates that take part
  weight.assign(static_cast<size_t>(K), 0.f);
  bool any = false;
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t k = 0; k < K; ++k) {
    if (!sasa_takes_part(ids, valid, k, p.vocab)) continue;
    any = true;
    mx = margins[k] > mx ? margins[k] : mx;
    if (margins[k] != margins[k]) mx = margins[k];  // NaN propagates (softmax of a NaN row is NaN)
  }
  if (!any) return;
  if (p.mode == int32_t(SasaMode::Tilt)) {
    for (int64_t k = 0; k < K; ++k)
      if (sasa_takes_part(ids, valid, k, p.vocab)) weight[k] = margins[k];
  } else {
    if (!std::isfinite(mx) && mx == mx) mx = 0.f;  // all margins +-inf: keep exp well defined
    float s = 0.f;
    for (int64_t k = 0; k < K; ++k) {
      if (!sasa_takes_part(ids, valid, k, p.vocab)) continue;
      weight[k] = std::exp(margins[k] - mx);
      s += weight[k];
    }
    const float inv = s > 0.f ? 1.f / s : 0.f;  // all margins -inf: zero weights (row unchanged), as the reference
    for (int64_t k = 0; k < K; ++k) weight[k] *= inv;
  }
  // 4. one write per distinct id: the first occurrence adds the weights of all occurrences
  for (int64_t k = 0; k < K; ++k) {
    if (!sasa_takes_part(ids, valid, k, p.vocab)) continue;
    const int64_t id = ids[k];
    bool first = true;
    for (int64_t j = 0; j < k && first; ++j)
      if (ids[j] == id && sasa_takes_part(ids, valid, j, p.vocab)) first = false;
    if (!first) continue;
    float total = weight[k];
    for (int64_t j = k + 1; j < K; ++j)
      if (ids[j] == id && sasa_takes_part(ids, valid, j, p.vocab)) total += weight[j];
    const float add = beta * total;
    logits[id] = from_float<T>(to_float(logits[id]) + add);
  }
}

}  // namespace cpu
}  // namespace detox
