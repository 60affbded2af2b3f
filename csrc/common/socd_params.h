// Parameters and scalar helpers shared by the SoCD kernels (CPU and CUDA). Free of torch headers.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DETOX_HD __host__ __device__ __forceinline__
#else
#define DETOX_HD inline
#endif

namespace detox {

// Divergence codes; the order is part of the op schema (see detox_kernels/socd.py).
enum class Divergence : int32_t { FKL = 0, RKL = 1, SKL = 2, JSD = 3, TVD = 4, L2 = 5 };

struct SocdParams {
  int64_t rows;        // B
  int64_t cols;        // V' (padded width)
  int64_t vocab;       // V <= V': columns that take part
  int64_t x_stride;    // row strides in elements (last dim contiguous)
  int64_t y_stride;
  int64_t out_stride;
  int64_t k_min;
  int64_t k_max;
  int32_t divergence;  // Divergence
  bool k_ceil;         // ceil (paper) or floor (official code)
  bool signed_sub;     // subtract alpha*y (official code) instead of alpha*|y| (paper)
};

// 16-bit storage types, bit-compatible with at::Half / at::BFloat16 / __half / __nv_bfloat16.
struct half_t { uint16_t bits; };
struct bfloat16_t { uint16_t bits; };

DETOX_HD float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
DETOX_HD uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

DETOX_HD float to_float(float v) { return v; }
DETOX_HD float to_float(bfloat16_t v) { return bits_to_float(static_cast<uint32_t>(v.bits) << 16); }
DETOX_HD float to_float(half_t v) {
  // IEEE binary16 -> binary32, exact (subnormals, inf and NaN included).
  const uint32_t h = v.bits;
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0x1fu) {
    u = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    u = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    u = sign;
  } else {  // subnormal: normalise
    exp = 113u;
    while ((man & 0x400u) == 0) {
      man <<= 1;
      --exp;
    }
    man &= 0x3ffu;
    u = sign | (exp << 23) | (man << 13);
  }
  return bits_to_float(u);
}

template <typename T> DETOX_HD T from_float(float v);
template <> DETOX_HD float from_float<float>(float v) { return v; }
template <> DETOX_HD bfloat16_t from_float<bfloat16_t>(float v) {
  // round to nearest even; NaN stays NaN
  uint32_t u = float_to_bits(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bfloat16_t{static_cast<uint16_t>((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bfloat16_t{static_cast<uint16_t>(u >> 16)};
}
template <> DETOX_HD half_t from_float<half_t>(float v) {
  // binary32 -> binary16, round to nearest even, overflow to inf, NaN kept.
  const uint32_t u = float_to_bits(v);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t au = u & 0x7fffffffu;
  if (au > 0x7f800000u) return half_t{static_cast<uint16_t>(sign | 0x7e00u)};
  if (au >= 0x477ff000u) return half_t{static_cast<uint16_t>(sign | 0x7c00u)};  // >= 65520: inf
  if (au < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    if (au < 0x33000000u) return half_t{static_cast<uint16_t>(sign)};  // < 2^-25 rounds to 0
    const uint32_t e = au >> 23;
    const uint32_t m = (au & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // 14..24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
    return half_t{static_cast<uint16_t>(sign | r)};
  }
  uint32_t r = au - 0x38000000u;  // rebias exponent 127 -> 15
  r = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
  return half_t{static_cast<uint16_t>(sign | r)};
}

// alpha = ln(1 + d') / (1 + ln(1 + d')), d' = max(d, 0); the caller handles non-finite d.
DETOX_HD float socd_alpha(float d) {
  const float dc = d > 0.f ? d : 0.f;
  const float l = log1pf(dc);
  return l / (1.f + l);
}

// k = clip(round(alpha * V), k_min, k_max) with clip(v, lo, hi) = min(max(v, lo), hi).
DETOX_HD int64_t socd_k(float alpha, const SocdParams& p) {
  const float s = alpha * static_cast<float>(p.vocab);
  const float r = p.k_ceil ? ceilf(s) : floorf(s);
  int64_t k = static_cast<int64_t>(r);
  if (k < p.k_min) k = p.k_min;
  if (k > p.k_max) k = p.k_max;
  return k;
}

// Order-preserving map of a float key to uint32 (larger float -> larger integer). -0.0 is
// folded onto +0.0: the contract compares keys as floats, where the two are equal (a tie).
DETOX_HD uint32_t ordered_bits(float f) {
  uint32_t u = float_to_bits(f);
  if (u == 0x80000000u) u = 0u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

}  // namespace detox
