// Toxification reversal on the CPU, one token row at a time, free of torch headers (the binding
// in reversal_cpu.cpp parallelises over rows). Contract: detox_kernels/reference/reversal.py.
//
// Per head: the dot product and the three squared norms are summed in kLanes independent float
// lanes (the loops vectorise), the lane totals combined in double; the update o' = o - s*delta is
// formed in float (as on the GPU) into a scratch row, with the row's two squared norms summed the
// same way; then the row is written once, rescaled. o is read once and written once. With
// delta = 0 the two norms are summed from identical values in the same order: the factor is 1.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "../common/reversal_params.h"
#include "../common/socd_params.h"  // to_float / from_float for the 16-bit types

namespace detox {
namespace cpu {

constexpr int kRevLanes = 16;

template <typename T>
void reversal_row(T* o, const T* delta, const T* e, const ReversalParams& p, std::vector<float>& scratch) {
  const int64_t H = p.heads, D = p.head_dim, n = H * D;
  scratch.resize(static_cast<size_t>(n));
  double before = 0.0, after = 0.0;
  for (int64_t h = 0; h < H; ++h) {
    const T* oh = o + h * D;
    const T* dh = delta + h * D;
    const T* eh = e + h * D;
    float* sh = scratch.data() + h * D;
    float a_dot[kRevLanes] = {}, a_oo[kRevLanes] = {}, a_ee[kRevLanes] = {}, a_dd[kRevLanes] = {};
    int64_t i = 0;
    for (; i + kRevLanes <= D; i += kRevLanes) {
      for (int l = 0; l < kRevLanes; ++l) {
        const float ov = to_float(oh[i + l]), dv = to_float(dh[i + l]), ev = to_float(eh[i + l]);
        sh[i + l] = ov;
        a_dot[l] += ev * ov;
        a_oo[l] += ov * ov;
        a_ee[l] += ev * ev;
        a_dd[l] += dv * dv;
      }
    }
    for (int l = 0; i < D; ++i, ++l) {
      const float ov = to_float(oh[i]), dv = to_float(dh[i]), ev = to_float(eh[i]);
      sh[i] = ov;
      a_dot[l] += ev * ov;
      a_oo[l] += ov * ov;
      a_ee[l] += ev * ev;
      a_dd[l] += dv * dv;
    }
    double dot = 0.0, oo = 0.0, ee = 0.0, dd = 0.0;
    for (int l = 0; l < kRevLanes; ++l) {
      dot += a_dot[l];
      oo += a_oo[l];
      ee += a_ee[l];
      dd += a_dd[l];
    }
    const double denom = std::sqrt(ee) * std::sqrt(oo);
    const double cs = denom > 0.0 ? dot / denom : 0.0;
    const float s = static_cast<float>(std::pow(1.0 + std::sqrt(dd), static_cast<double>(p.norm_exp)) *
                                       std::pow(1.0 + (cs > 0.0 ? cs : 0.0), static_cast<double>(p.sim_exp)));
    float a_b[kRevLanes] = {}, a_a[kRevLanes] = {};
    i = 0;
    for (; i + kRevLanes <= D; i += kRevLanes) {
      for (int l = 0; l < kRevLanes; ++l) {
        const float ov = sh[i + l];
        const float nv = ov - s * to_float(dh[i + l]);
        sh[i + l] = nv;
        a_b[l] += ov * ov;
        a_a[l] += nv * nv;
      }
    }
    for (int l = 0; i < D; ++i, ++l) {
      const float ov = sh[i];
      const float nv = ov - s * to_float(dh[i]);
      sh[i] = nv;
      a_b[l] += ov * ov;
      a_a[l] += nv * nv;
    }
    for (int l = 0; l < kRevLanes; ++l) {
      before += a_b[l];
      after += a_a[l];
    }
  }
  float ratio = 1.f;
  if (p.renorm && after != 0.0) ratio = static_cast<float>(std::sqrt(before) / std::sqrt(after));
  for (int64_t i = 0; i < n; ++i) o[i] = from_float<T>(scratch[static_cast<size_t>(i)] * ratio);
}

}  // namespace cpu
}  // namespace detox
