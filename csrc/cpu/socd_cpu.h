// SoCD on the CPU, free of torch headers. Semantics: detox_kernels/reference/socd.py (the kernel
// contract). The row kernel (passes, radix select, split over threads) is socd_cpu_impl.h, compiled
// here twice: for the baseline ISA and for AVX2 + FMA, picked at run time (cpu_has_avx2()).
// `socd_row` runs one row on the calling thread; the binding (socd_cpu.cpp) runs rows in parallel,
// or, with fewer rows than threads, each row on all threads (`socd_row_mt` with tid / nt).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "../common/socd_params.h"

namespace detox {
namespace cpu {

// exp(x) for x <= 0 (what softmax needs); 0 for x < -87 (and -inf). Branch-free, so loops
// that call it vectorise. Cephes polynomial, about 1 ulp.
inline float exp_nonpos(float x) {
  const float xc = x < -87.f ? -87.f : x;
  const float t = xc * 1.44269504088896341f + 12582912.f;  // round to nearest via the magic add
  const float n = t - 12582912.f;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float r2 = r * r;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  const float e = poly * r2 + r + 1.f;
  const int32_t ni = static_cast<int32_t>(n);
  const float scale = bits_to_float(static_cast<uint32_t>(ni + 127) << 23);
  return x < -87.f ? 0.f : e * scale;
}

constexpr int64_t kChunk = 1024;  // columns per partial sum (float within, double across)
constexpr int kBins1 = 2048;      // first radix round: the 11 top bits of the ordered key

// Merged per-row values: each thread merges the partials into its own copy (same order, same result).
struct RowShared {
  float mx, my, lse_x, lse_y, d, alpha;
  double sx, sy;
  int64_t k, m, gt, need_eq;
  int bin;
  uint32_t thr;
  bool skip;
};

// Per-thread partial results of one row.
struct ThreadPart {
  float mx, my;
  int flags, klflags;
  std::vector<uint32_t> hist;  // kBins1
  std::vector<uint32_t> gu;    // the boundary bin's ordered keys ...
  std::vector<int32_t> gi;     // ... and ids, ascending
};

struct RowScratch {
  std::vector<float> ea, eb;    // exp(x - max x), exp(y - max y) (jsd, tvd, l2)
  std::vector<uint32_t> u;      // ordered key bits of the candidates, 0 for the others
  std::vector<float> part;      // 4 float partial sums per chunk
  std::vector<double> dpart;    // one divergence partial per chunk
  std::vector<ThreadPart> tp;   // one per thread
  void prepare(int64_t v, int nt) {
    const size_t n = static_cast<size_t>(v), nc = static_cast<size_t>((v + kChunk - 1) / kChunk);
    if (ea.size() < n) {
      ea.resize(n);
      eb.resize(n);
      u.resize(n);
    }
    if (part.size() < 4 * nc) {
      part.resize(4 * nc);
      dpart.resize(nc);
    }
    if (tp.size() < static_cast<size_t>(nt)) tp.resize(nt);
    for (int t = 0; t < nt; ++t) tp[t].hist.resize(kBins1);
  }
};

#if defined(_OPENMP)
#define DETOX_SOCD_BARRIER(nt) \
  do {                         \
    if ((nt) > 1) {            \
      _Pragma("omp barrier")   \
    }                          \
  } while (0)
#else
#define DETOX_SOCD_BARRIER(nt) \
  do {                         \
  } while (0)
#endif

#define DETOX_SOCD_NS generic
#include "socd_cpu_impl.h"
#undef DETOX_SOCD_NS

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__AVX2__)
#define DETOX_SOCD_HAVE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define DETOX_SOCD_NS avx2
#include "socd_cpu_impl.h"
#undef DETOX_SOCD_NS
#pragma GCC pop_options
#endif

inline bool cpu_has_avx2() {
#if defined(DETOX_SOCD_HAVE_AVX2)
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

// Thread `tid` of `nt` (all inside one parallel region; s.prepare(V, nt) done before) on one row.
template <typename T>
void socd_row_mt(const T* x, const T* y, T* out, const SocdParams& p, float* alpha_out, float* div_out,
                 int32_t* k_out, RowScratch& s, int tid, int nt) {
#if defined(DETOX_SOCD_HAVE_AVX2)
  if (cpu_has_avx2()) return avx2::socd_row_mt<T>(x, y, out, p, alpha_out, div_out, k_out, s, tid, nt);
#endif
  generic::socd_row_mt<T>(x, y, out, p, alpha_out, div_out, k_out, s, tid, nt);
}

// One row on the calling thread.
template <typename T>
void socd_row(const T* x, const T* y, T* out, const SocdParams& p, float* alpha_out, float* div_out,
              int32_t* k_out, RowScratch& s) {
  s.prepare(p.vocab, 1);
  socd_row_mt<T>(x, y, out, p, alpha_out, div_out, k_out, s, 0, 1);
}

}  // namespace cpu
}  // namespace detox
