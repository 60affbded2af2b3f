// Toxification reversal on the CPU, one token row at a time, free of torch headers (the binding
// in reversal_cpu.cpp parallelises over rows). Contract: detox_kernels/reference/reversal.py.
// Sums in double; the row is read once (the updated values are kept in a scratch row of doubles)
// and written once.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "../common/reversal_params.h"
#include "../common/socd_params.h"  // to_float / from_float for the 16-bit types

namespace detox {
namespace cpu {

template <typename T>
void reversal_row(T* o, const T* delta, const T* e, const ReversalParams& p, std::vector<double>& scratch) {
  const int64_t H = p.heads, D = p.head_dim, n = H * D;
  scratch.resize(static_cast<size_t>(n));
  double before = 0.0, after = 0.0;
  for (int64_t h = 0; h < H; ++h) {
    const T* oh = o + h * D;
    const T* dh = delta + h * D;
    const T* eh = e + h * D;
    double* sh = scratch.data() + h * D;
    double dot = 0.0, oo = 0.0, ee = 0.0, dd = 0.0;
    for (int64_t i = 0; i < D; ++i) {
      const double ov = to_float(oh[i]), dv = to_float(dh[i]), ev = to_float(eh[i]);
      dot += ev * ov;
      oo += ov * ov;
      ee += ev * ev;
      dd += dv * dv;
    }
    const double denom = std::sqrt(ee) * std::sqrt(oo);
    const double cos = denom > 0.0 ? dot / denom : 0.0;
    const double s_norm = std::pow(1.0 + std::sqrt(dd), static_cast<double>(p.norm_exp));
    const double s_sim = std::pow(1.0 + (cos > 0.0 ? cos : 0.0), static_cast<double>(p.sim_exp));
    const double s = s_norm * s_sim;
    for (int64_t i = 0; i < D; ++i) {
      const double ov = to_float(oh[i]);
      const double nv = ov - s * static_cast<double>(to_float(dh[i]));
      sh[i] = nv;
      before += ov * ov;
      after += nv * nv;
    }
  }
  double ratio = 1.0;
  if (p.renorm && after != 0.0) ratio = std::sqrt(before) / std::sqrt(after);
  for (int64_t i = 0; i < n; ++i) {
    o[i] = from_float<T>(static_cast<float>(scratch[static_cast<size_t>(i)] * ratio));
  }
}

}  // namespace cpu
}  // namespace detox
