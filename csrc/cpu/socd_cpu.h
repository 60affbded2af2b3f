// SoCD on the CPU: one row at a time, free of torch headers (the binding in socd_cpu.cpp
// parallelises over rows). Semantics: detox_kernels/reference/socd.py (the kernel contract).
//
// Passes over a row (it stays in L2 for real vocabulary sizes):
//   1. max of x and y, and the validity flags (NaN / +inf);
//   2. softmax sums, and E_p[x - y], E_q[y - x] for the KL divergences;
//   3. (jsd, tvd, l2 only) the divergence from the normalised p and q;
//   4. the candidates key = y - x > c, and an exact selection of the m largest (ties: lower id);
//   5. the write: out = x, minus alpha*|y| (or alpha*y) on the selected tokens.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
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

struct RowScratch {
  std::vector<float> key;    // candidate keys
  std::vector<int32_t> idx;  // candidate ids
  std::vector<int32_t> order;
};

template <typename T>
void socd_row(const T* x, const T* y, T* out, const SocdParams& p, float* alpha_out, float* div_out,
              int32_t* k_out, RowScratch& s) {
  const int64_t V = p.vocab;
  const int64_t W = p.cols;
  const float ninf = -std::numeric_limits<float>::infinity();
  const float pinf = std::numeric_limits<float>::infinity();

  auto copy_row = [&]() {
    if (out != x) {
      for (int64_t j = 0; j < W; ++j) out[j] = x[j];
    }
  };

  // Pass 1: maxima and validity.
  float mx = ninf, my = ninf;
  int bad = 0;
#pragma omp simd reduction(max : mx, my) reduction(| : bad)
  for (int64_t j = 0; j < V; ++j) {
    const float a = to_float(x[j]);
    const float b = to_float(y[j]);
    mx = a > mx ? a : mx;
    my = b > my ? b : my;
    bad |= (a != a) | (b != b) | (a == pinf) | (b == pinf);
  }
  if (bad || mx == ninf || my == ninf || V == 0) {
    *alpha_out = 0.f;
    *div_out = std::numeric_limits<float>::quiet_NaN();
    *k_out = 0;
    copy_row();
    return;
  }

  // Pass 2: softmax sums and the KL expectations.
  const int div = p.divergence;
  const bool need_fkl = div == int(Divergence::FKL) || div == int(Divergence::SKL);
  const bool need_rkl = div == int(Divergence::RKL) || div == int(Divergence::SKL);
  double sx = 0.0, sy = 0.0, ax = 0.0, ay = 0.0;
  int fkl_inf = 0, rkl_inf = 0;
  // Float sums within chunks of kChunk (vectorised), chunk sums added in double: a plain float
  // sum over 10^5 terms loses ~1e-4 relative accuracy, a double one does not vectorise.
  constexpr int64_t kChunk = 1024;
  if (need_fkl || need_rkl) {
    for (int64_t j0 = 0; j0 < V; j0 += kChunk) {
      const int64_t j1 = std::min(V, j0 + kChunk);
      float csx = 0.f, csy = 0.f, cax = 0.f, cay = 0.f;
#pragma omp simd reduction(+ : csx, csy, cax, cay) reduction(| : fkl_inf, rkl_inf)
      for (int64_t j = j0; j < j1; ++j) {
        const float a = to_float(x[j]);
        const float b = to_float(y[j]);
        const float ea = exp_nonpos(a - mx);
        const float eb = exp_nonpos(b - my);
        csx += ea;
        csy += eb;
        const bool a_fin = a != ninf, b_fin = b != ninf;
        // terms with p_j = 0 (x_j = -inf) contribute 0; p_j > 0 with q_j = 0 gives +inf
        cax += (a_fin && b_fin) ? ea * (a - b) : 0.f;
        cay += (a_fin && b_fin) ? eb * (b - a) : 0.f;
        fkl_inf |= a_fin & !b_fin;
        rkl_inf |= b_fin & !a_fin;
      }
      sx += csx;
      sy += csy;
      ax += cax;
      ay += cay;
    }
  } else {
    for (int64_t j0 = 0; j0 < V; j0 += kChunk) {
      const int64_t j1 = std::min(V, j0 + kChunk);
      float csx = 0.f, csy = 0.f;
#pragma omp simd reduction(+ : csx, csy)
      for (int64_t j = j0; j < j1; ++j) {
        csx += exp_nonpos(to_float(x[j]) - mx);
        csy += exp_nonpos(to_float(y[j]) - my);
      }
      sx += csx;
      sy += csy;
    }
  }
  const float lse_x = mx + static_cast<float>(std::log(sx));
  const float lse_y = my + static_cast<float>(std::log(sy));

  float d;
  if (div == int(Divergence::FKL) || div == int(Divergence::RKL) || div == int(Divergence::SKL)) {
    const double lx = static_cast<double>(mx) + std::log(sx), ly = static_cast<double>(my) + std::log(sy);
    const float fkl = fkl_inf ? pinf : static_cast<float>(ax / sx - lx + ly);
    const float rkl = rkl_inf ? pinf : static_cast<float>(ay / sy - ly + lx);
    d = div == int(Divergence::FKL) ? fkl : div == int(Divergence::RKL) ? rkl : 0.5f * (fkl + rkl);
  } else {
    // Pass 3: divergences of the normalised distributions.
    double acc = 0.0;
    if (div == int(Divergence::TVD)) {
      for (int64_t j0 = 0; j0 < V; j0 += kChunk) {
        const int64_t j1 = std::min(V, j0 + kChunk);
        float cacc = 0.f;
#pragma omp simd reduction(+ : cacc)
        for (int64_t j = j0; j < j1; ++j) {
          const float pj = exp_nonpos(to_float(x[j]) - lse_x);
          const float qj = exp_nonpos(to_float(y[j]) - lse_y);
          cacc += std::fabs(pj - qj);
        }
        acc += cacc;
      }
      d = static_cast<float>(0.5 * acc);
    } else if (div == int(Divergence::L2)) {
      for (int64_t j0 = 0; j0 < V; j0 += kChunk) {
        const int64_t j1 = std::min(V, j0 + kChunk);
        float cacc = 0.f;
#pragma omp simd reduction(+ : cacc)
        for (int64_t j = j0; j < j1; ++j) {
          const float pj = exp_nonpos(to_float(x[j]) - lse_x);
          const float qj = exp_nonpos(to_float(y[j]) - lse_y);
          cacc += (pj - qj) * (pj - qj);
        }
        acc += cacc;
      }
      d = static_cast<float>(std::sqrt(acc));
    } else {  // JSD: 1/2 sum p log(p/m) + 1/2 sum q log(q/m), m = (p+q)/2
      for (int64_t j = 0; j < V; ++j) {
        const float a = to_float(x[j]);
        const float b = to_float(y[j]);
        const float lp = a - lse_x, lq = b - lse_y;
        const float pj = a == ninf ? 0.f : std::exp(lp);
        const float qj = b == ninf ? 0.f : std::exp(lq);
        const float mj = 0.5f * (pj + qj);
        if (mj <= 0.f) continue;
        const float lm = std::log(mj);
        if (pj > 0.f) acc += pj * (lp - lm);
        if (qj > 0.f) acc += qj * (lq - lm);
      }
      d = static_cast<float>(0.5 * acc);
    }
  }
  *div_out = d;
  if (!std::isfinite(d)) {
    *alpha_out = 0.f;
    *k_out = 0;
    copy_row();
    return;
  }
  const float alpha = socd_alpha(d);
  const int64_t k = socd_k(alpha, p);
  *alpha_out = alpha;

  // Pass 4: candidates key_j = y_j - x_j > c = lse_y - lse_x, and the m largest of them.
  const float c = lse_y - lse_x;
  s.key.clear();
  s.idx.clear();
  for (int64_t j = 0; j < V; ++j) {
    const float key = to_float(y[j]) - to_float(x[j]);
    if (key > c) {
      s.key.push_back(key);
      s.idx.push_back(static_cast<int32_t>(j));
    }
  }
  const int64_t npos = static_cast<int64_t>(s.key.size());
  const int64_t m = std::min<int64_t>(k, npos);
  *k_out = static_cast<int32_t>(m);

  // Pass 5: write.
  copy_row();
  if (m <= 0) return;
  const float* keys = s.key.data();
  const int32_t* ids = s.idx.data();
  auto apply = [&](int32_t j) {
    const float a = to_float(x[j]);
    const float b = to_float(y[j]);
    const float sub = p.signed_sub ? b : std::fabs(b);
    out[j] = from_float<T>(a - alpha * sub);
  };
  if (m == npos) {
    for (int64_t i = 0; i < npos; ++i) apply(ids[i]);
    return;
  }
  // Exact selection: order by (key descending, id ascending); candidate positions are in
  // ascending id order, so comparing positions compares ids.
  s.order.resize(npos);
  for (int64_t i = 0; i < npos; ++i) s.order[i] = static_cast<int32_t>(i);
  auto before = [keys](int32_t a, int32_t b) {
    return keys[a] > keys[b] || (keys[a] == keys[b] && a < b);
  };
  std::nth_element(s.order.begin(), s.order.begin() + (m - 1), s.order.end(), before);
  for (int64_t i = 0; i < m; ++i) apply(ids[s.order[i]]);
}

}  // namespace cpu
}  // namespace detox
