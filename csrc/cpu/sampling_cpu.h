// Fused top-k/top-p sampling on the CPU, one row at a time, free of torch headers (the binding in
// sampling_cpu.cpp parallelises over rows, and inside a row when there are fewer rows than
// threads). Semantics: the kernel contract in detox_kernels/reference/sampling.py.
//
// Per row, no sort of the vocabulary:
//   1. scores x = logit / temperature (float32), their order-preserving keys and the maximum;
//   2. top-k: radix select (11 + 11 + 10 bits) of the k-th largest key; the first pass runs over
//      the row, the later ones over the few keys of the chosen bucket;
//   3. top-p: the same radix select, on the probability mass per bucket instead of the count, of
//      the cut-off value v* (the first value, in descending order, at which the mass of the
//      tokens >= v* reaches top_p of the kept mass), then how many ties at v* are kept (lowest
//      ids first) and the id J of the last one;
//   4. inverse-CDF sampling: the kept mass Z, then the first kept id whose cumulative mass (in
//      id order) exceeds u * Z.
// Sums are in double. Scratch: keys [V] uint32 and e = exp(x - max) [V] float, reused per thread.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../common/sampling_params.h"

namespace detox {
namespace cpu {

struct SamplingScratch {
  std::vector<uint32_t> keys;
  std::vector<float> e;
  std::vector<uint32_t> cand_key;  // gathered bucket members
  std::vector<float> cand_e;
  std::vector<int64_t> hist;
  std::vector<double> mass;
};

constexpr int kSampBits[3] = {11, 11, 10};
constexpr int kSampShift[3] = {21, 10, 0};

// Branch-free ordered_bits of the score of a logit (contract item 1; vectorisable).
inline uint32_t sampling_key_of(float logit, float temperature, bool unit) {
  const float x = unit ? logit : logit / temperature;  // x / 1 == x exactly
  uint32_t u = float_to_bits(x);
  u = x != x ? 0xff800000u : u;    // NaN -> -inf
  u = u == 0x80000000u ? 0u : u;   // -0.0 -> +0.0
  const uint32_t neg = static_cast<uint32_t>(static_cast<int32_t>(u) >> 31);
  return u ^ (neg | 0x80000000u);  // == ordered_bits
}

// Branch-free sampling_key_to_float.
inline float sampling_key_float(uint32_t k) {
  const uint32_t pos = static_cast<uint32_t>(static_cast<int32_t>(k) >> 31);  // all ones: a positive float
  return bits_to_float(k ^ (~pos | 0x80000000u));
}

// Pass 1 over [begin, end): keys and the maximum key. Returns the maximum key.
template <typename T>
uint32_t sampling_load(const T* lg, int64_t begin, int64_t end, float temperature, uint32_t* keys) {
  uint32_t mx = 0;
  const bool unit = temperature == 1.f;
#pragma omp simd reduction(max : mx)
  for (int64_t i = begin; i < end; ++i) {
    const uint32_t k = sampling_key_of(to_float(lg[i]), temperature, unit);
    keys[i] = k;
    mx = k > mx ? k : mx;
  }
  return mx;
}

// The exp pass, written to vectorise. GCC if-converts its selects only without trapping-math
// (which changes no result here: nothing traps or reads the FP flags); the helpers it calls are
// defined inside the same region so that they inline.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif

// exp(d) for d <= 0 in float32 (within 2 ulp of expf; 0 below -87, where expf is denormal or
// 0: such a token has no weight next to the maximum's 1).
inline float sampling_exp_neg(float d) {
  const float dc = d > -87.f ? d : -87.f;  // also -inf -> -87
  const float n = (dc * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round to nearest
  const float r = (dc - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
  float p = 1.f / 5040.f + r * (1.f / 40320.f);
  p = 1.f / 720.f + r * p;
  p = 1.f / 120.f + r * p;
  p = 1.f / 24.f + r * p;
  p = 1.f / 6.f + r * p;
  p = 0.5f + r * p;
  p = 1.f + r * p;
  p = 1.f + r * p;
  const uint32_t sb = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &sb, 4);
  const float res = p * scale;
  return d < -87.f ? 0.f : res;
}

// e[i] = exp(x_i - max) over [begin, end) for keys >= floor (0 elsewhere); returns their sum.
inline double sampling_exp(const uint32_t* keys, int64_t begin, int64_t end, uint32_t floor, float mx, float* e) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    const uint32_t k = keys[i];
    const uint32_t pos = static_cast<uint32_t>(static_cast<int32_t>(k) >> 31);
    const uint32_t u = k ^ (~pos | 0x80000000u);  // sampling_key_to_float
    float x;
    std::memcpy(&x, &u, 4);
    const float v = sampling_exp_neg(x - mx);
    e[i] = k >= floor ? v : 0.f;
  }
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = begin; i < end; ++i) s += e[i];
  return s;
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

// The key of the k-th largest (1-based, duplicates counted) of keys[0, V).
inline uint32_t sampling_kth_key(const uint32_t* keys, int64_t V, int64_t k, SamplingScratch& s) {
  uint32_t prefix = 0, mask = 0;
  int64_t rem = k;
  bool gathered = false;
  for (int pass = 0; pass < 3; ++pass) {
    const int nb = 1 << kSampBits[pass], sh = kSampShift[pass];
    s.hist.assign(static_cast<size_t>(nb), 0);
    if (!gathered) {
      for (int64_t i = 0; i < V; ++i) ++s.hist[keys[i] >> sh];  // pass 0: mask == 0
    } else {
      for (uint32_t key : s.cand_key) ++s.hist[(key >> sh) & uint32_t(nb - 1)];
    }
    int b = nb - 1;
    for (; b > 0; --b) {
      if (s.hist[b] >= rem) break;
      rem -= s.hist[b];
    }
    prefix |= uint32_t(b) << sh;
    mask |= uint32_t(nb - 1) << sh;
    if (!gathered) {
      s.cand_key.clear();
      for (int64_t i = 0; i < V; ++i)
        if ((keys[i] & mask) == prefix) s.cand_key.push_back(keys[i]);
      gathered = true;
    } else {
      size_t w = 0;
      for (uint32_t key : s.cand_key)
        if ((key & mask) == prefix) s.cand_key[w++] = key;
      s.cand_key.resize(w);
    }
  }
  return prefix;
}

struct TopPCut {
  uint32_t key;  // cut-off value v* (as a key)
  int64_t last;  // id of the last kept token tied at v* (V: all of them)
};

// Top-p cut-off among the tokens with key >= floor, e as from sampling_exp, P = top_p * Z.
inline TopPCut sampling_top_p_cut(const uint32_t* keys, const float* e, int64_t V, uint32_t floor, double P,
                                  SamplingScratch& s) {
  uint32_t prefix = 0, mask = 0;
  double G = 0.0;  // mass strictly above the current bucket
  int64_t ties = 0;
  for (int pass = 0; pass < 3; ++pass) {
    const int nb = 1 << kSampBits[pass], sh = kSampShift[pass];
    s.hist.assign(static_cast<size_t>(nb), 0);
    s.mass.assign(static_cast<size_t>(nb), 0.0);
    if (pass == 0) {
      for (int64_t i = 0; i < V; ++i) {
        if (keys[i] < floor) continue;
        const uint32_t b = keys[i] >> sh;
        ++s.hist[b];
        s.mass[b] += e[i];
      }
    } else {
      for (size_t j = 0; j < s.cand_key.size(); ++j) {
        const uint32_t b = (s.cand_key[j] >> sh) & uint32_t(nb - 1);
        ++s.hist[b];
        s.mass[b] += s.cand_e[j];
      }
    }
    // the first bucket (descending) at which the mass reaches P; else the lowest non-empty one
    int b = nb - 1, low = -1;
    for (; b >= 0; --b) {
      if (s.hist[b] == 0) continue;
      low = b;
      if (G + s.mass[b] >= P) break;
      G += s.mass[b];
    }
    if (b < 0) {  // never reached (rounding): take the lowest bucket, mass above it is G - mass[low]
      b = low;
      G -= s.mass[low];
    }
    ties = s.hist[b];
    prefix |= uint32_t(b) << sh;
    mask |= uint32_t(nb - 1) << sh;
    if (pass == 0) {
      s.cand_key.clear();
      s.cand_e.clear();
      for (int64_t i = 0; i < V; ++i)
        if (keys[i] >= floor && (keys[i] & mask) == prefix) {
          s.cand_key.push_back(keys[i]);
          s.cand_e.push_back(e[i]);
        }
    } else {
      size_t w = 0;
      for (size_t j = 0; j < s.cand_key.size(); ++j)
        if ((s.cand_key[j] & mask) == prefix) {
          s.cand_key[w] = s.cand_key[j];
          s.cand_e[w++] = s.cand_e[j];
        }
      s.cand_key.resize(w);
      s.cand_e.resize(w);
    }
  }
  const double ev = s.cand_e.empty() ? 0.0 : s.cand_e[0];
  const int64_t n = sampling_ties_kept(P, G, ev, ties);
  TopPCut cut{prefix, V};
  if (n < ties) {
    int64_t seen = 0;
    for (int64_t i = 0; i < V; ++i)
      if (keys[i] == prefix && ++seen == n) {
        cut.last = i;
        break;
      }
  }
  return cut;
}

inline bool sampling_kept(uint32_t key, int64_t i, uint32_t floor, bool top_p, const TopPCut& cut) {
  if (!top_p) return key >= floor;
  return key > cut.key || (key == cut.key && i <= cut.last);
}

// Kept mass of [begin, end) (id order) and the id of its last kept token (-1: none).
inline double sampling_kept_mass(const uint32_t* keys, const float* e, int64_t begin, int64_t end, uint32_t floor,
                                 bool top_p, const TopPCut& cut, int64_t& last) {
  double s = 0.0;
  for (int64_t i = begin; i < end; ++i) {
    if (!sampling_kept(keys[i], i, floor, top_p, cut)) continue;
    s += e[i];
    if (e[i] > 0.f) last = i;
  }
  return s;
}

// The first kept id of [begin, end) at which acc (starting from acc0) exceeds target; -1: none.
inline int64_t sampling_find(const uint32_t* keys, const float* e, int64_t begin, int64_t end, uint32_t floor,
                             bool top_p, const TopPCut& cut, double acc0, double target) {
  double acc = acc0;
  for (int64_t i = begin; i < end; ++i) {
    if (!sampling_kept(keys[i], i, floor, top_p, cut)) continue;
    acc += e[i];
    if (acc > target && e[i] > 0.f) return i;
  }
  return -1;
}

// One row: the sampled token.
template <typename T>
int64_t sample_row(const T* lg, float u, const SamplingParams& p, SamplingScratch& s) {
  const int64_t V = p.vocab;
  if (V <= 0) return 0;
  s.keys.resize(static_cast<size_t>(V));
  s.e.resize(static_cast<size_t>(V));
  uint32_t* keys = s.keys.data();
  float* e = s.e.data();
  const uint32_t mxk = sampling_load(lg, 0, V, p.temperature, keys);
  const float mx = sampling_key_to_float(mxk);
  if (mx == -__builtin_huge_valf()) return 0;  // all -inf (or NaN)
  const uint32_t floor = sampling_top_k_on(p) ? sampling_kth_key(keys, V, p.top_k, s) : 0u;
  const double zk = sampling_exp(keys, 0, V, floor, mx, e);
  const bool tp = sampling_top_p_on(p);
  TopPCut cut{0u, V};
  if (tp) cut = sampling_top_p_cut(keys, e, V, floor, p.top_p * zk, s);
  int64_t last = -1;
  const double z = tp ? sampling_kept_mass(keys, e, 0, V, floor, tp, cut, last) : zk;
  if (!tp)
    for (int64_t i = V - 1; i >= 0; --i)
      if (e[i] > 0.f) {
        last = i;
        break;
      }
  const int64_t id = sampling_find(keys, e, 0, V, floor, tp, cut, 0.0, static_cast<double>(u) * z);
  return id >= 0 ? id : last;
}

}  // namespace cpu
}  // namespace detox
