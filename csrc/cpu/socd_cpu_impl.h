// The SoCD CPU row kernel, included twice by socd_cpu.h: once for the baseline ISA (namespace
// `generic`) and once under `#pragma GCC target("avx2,fma")` (namespace `avx2`), chosen at run time.
// No include guard on purpose. Free of torch headers.
//
// One row is processed by `nt` threads (nt = 1: the whole row by the caller). Thread `tid` owns the
// chunks [tid * nc / nt, (tid + 1) * nc / nt) of kChunk columns; every partial result is stored per
// chunk (sums) or per thread (maxima, histograms, tie lists) and merged in a fixed order, so the
// result does not depend on nt, bit for bit. Passes (a row of real size stays in L2):
//   1. maxima of x and y and the validity flags;
//   2. one exponential per element per input: the softmax sums (and E_p[x - y], E_q[y - x] for the
//      KL divergences); for jsd / tvd / l2 the exponentials are kept in the scratch;
//   3. (jsd, tvd, l2) the divergence from the kept exponentials (no further exp);
//   4. the ordered bits u_j of the key y_j - x_j for candidates (key > c), 0 otherwise, and a
//      histogram of their 11 top bits;
//   5. radix select of the m-th largest key: the boundary bin's elements are gathered (in id
//      order) and refined on their 11 middle and 10 low bits; threshold T and the number of ties
//      at T to take, lowest ids first;
//   6. the write: out = x, minus alpha*|y| (or alpha*y) where u > T; then the ties.

namespace DETOX_SOCD_NS {

inline void chunk_range(int64_t nc, int tid, int nt, int64_t* c0, int64_t* c1) {
  *c0 = nc * tid / nt;
  *c1 = nc * (tid + 1) / nt;
}

template <typename T>
void socd_row_mt(const T* x, const T* y, T* out, const SocdParams& p, float* alpha_out, float* div_out,
                 int32_t* k_out, RowScratch& s, int tid, int nt) {
  const int64_t V = p.vocab;
  const int64_t W = p.cols;
  const float ninf = -std::numeric_limits<float>::infinity();
  const float pinf = std::numeric_limits<float>::infinity();
  const int64_t nc = (V + kChunk - 1) / kChunk;
  int64_t c0, c1;
  chunk_range(nc, tid, nt, &c0, &c1);
  const int64_t j0 = c0 * kChunk, j1 = std::min(V, c1 * kChunk);
  // Merged values: every thread merges the partials itself (in the same order, so all agree) instead
  // of thread 0 merging between two barriers; only thread 0 writes the statistics.
  RowShared sh;
  ThreadPart& tp = s.tp[tid];

  // The padded tail and, for rows left unchanged, the whole row: out = x.
  auto copy_range = [&](int64_t a, int64_t b) {
    if (out != x) {
      for (int64_t j = a; j < b; ++j) out[j] = x[j];
    }
  };
  if (tid == nt - 1) copy_range(V, W);

  // Pass 1: maxima and validity.
  {
    float mx = ninf, my = ninf;
    int bad = 0;
#pragma omp simd reduction(max : mx, my) reduction(| : bad)
    for (int64_t j = j0; j < j1; ++j) {
      const float a = to_float(x[j]);
      const float b = to_float(y[j]);
      mx = a > mx ? a : mx;
      my = b > my ? b : my;
      bad |= (a != a) | (b != b) | (a == pinf) | (b == pinf);
    }
    tp.mx = mx;
    tp.my = my;
    tp.flags = bad;
  }
  DETOX_SOCD_BARRIER(nt);
  {
    float mx = ninf, my = ninf;
    int bad = 0;
    for (int t = 0; t < nt; ++t) {
      mx = std::max(mx, s.tp[t].mx);
      my = std::max(my, s.tp[t].my);
      bad |= s.tp[t].flags;
    }
    sh.mx = mx;
    sh.my = my;
    sh.skip = bad || mx == ninf || my == ninf || V == 0;
    if (sh.skip && tid == 0) {
      *alpha_out = 0.f;
      *div_out = std::numeric_limits<float>::quiet_NaN();
      *k_out = 0;
    }
  }
  if (sh.skip) {
    copy_range(j0, j1);
    return;
  }

  // Pass 2: one exponential per element per input.
  const int div = p.divergence;
  const bool kl = div == int(Divergence::FKL) || div == int(Divergence::RKL) || div == int(Divergence::SKL);
  const float mx = sh.mx, my = sh.my;
  float* part = s.part.data();  // 4 floats per chunk
  if (kl) {
    int fkl_inf = 0, rkl_inf = 0;
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t a0 = c * kChunk, a1 = std::min(V, a0 + kChunk);
      float csx = 0.f, csy = 0.f, cax = 0.f, cay = 0.f;
#pragma omp simd reduction(+ : csx, csy, cax, cay) reduction(| : fkl_inf, rkl_inf)
      for (int64_t j = a0; j < a1; ++j) {
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
      part[4 * c + 0] = csx;
      part[4 * c + 1] = csy;
      part[4 * c + 2] = cax;
      part[4 * c + 3] = cay;
    }
    tp.klflags = fkl_inf | (rkl_inf << 1);  // not flags: others may still read those
  } else {
    float* ea_buf = s.ea.data();
    float* eb_buf = s.eb.data();
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t a0 = c * kChunk, a1 = std::min(V, a0 + kChunk);
      float csx = 0.f, csy = 0.f;
#pragma omp simd reduction(+ : csx, csy)
      for (int64_t j = a0; j < a1; ++j) {
        const float ea = exp_nonpos(to_float(x[j]) - mx);
        const float eb = exp_nonpos(to_float(y[j]) - my);
        ea_buf[j] = ea;
        eb_buf[j] = eb;
        csx += ea;
        csy += eb;
      }
      part[4 * c + 0] = csx;
      part[4 * c + 1] = csy;
    }
  }
  DETOX_SOCD_BARRIER(nt);
  {
    double sx = 0.0, sy = 0.0, ax = 0.0, ay = 0.0;
    for (int64_t c = 0; c < nc; ++c) {  // chunk order: independent of nt
      sx += part[4 * c + 0];
      sy += part[4 * c + 1];
      if (kl) {
        ax += part[4 * c + 2];
        ay += part[4 * c + 3];
      }
    }
    sh.sx = sx;
    sh.sy = sy;
    sh.lse_x = mx + static_cast<float>(std::log(sx));
    sh.lse_y = my + static_cast<float>(std::log(sy));
    if (kl) {
      int fkl_inf = 0, rkl_inf = 0;
      for (int t = 0; t < nt; ++t) {
        fkl_inf |= s.tp[t].klflags & 1;
        rkl_inf |= (s.tp[t].klflags >> 1) & 1;
      }
      const double lx = static_cast<double>(mx) + std::log(sx), ly = static_cast<double>(my) + std::log(sy);
      const float fkl = fkl_inf ? pinf : static_cast<float>(ax / sx - lx + ly);
      const float rkl = rkl_inf ? pinf : static_cast<float>(ay / sy - ly + lx);
      sh.d = div == int(Divergence::FKL) ? fkl : div == int(Divergence::RKL) ? rkl : 0.5f * (fkl + rkl);
    }
  }

  // Pass 3: divergences of the normalised distributions, from the kept exponentials.
  if (!kl) {
    const float* ea_buf = s.ea.data();
    const float* eb_buf = s.eb.data();
    double* dpart = s.dpart.data();
    const float isx = static_cast<float>(1.0 / sh.sx), isy = static_cast<float>(1.0 / sh.sy);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t a0 = c * kChunk, a1 = std::min(V, a0 + kChunk);
      if (div == int(Divergence::TVD)) {
        float cacc = 0.f;
#pragma omp simd reduction(+ : cacc)
        for (int64_t j = a0; j < a1; ++j) cacc += std::fabs(ea_buf[j] * isx - eb_buf[j] * isy);
        dpart[c] = cacc;
      } else if (div == int(Divergence::L2)) {
        float cacc = 0.f;
#pragma omp simd reduction(+ : cacc)
        for (int64_t j = a0; j < a1; ++j) {
          const float dd = ea_buf[j] * isx - eb_buf[j] * isy;
          cacc += dd * dd;
        }
        dpart[c] = cacc;
      } else {  // JSD: 1/2 sum p log(p/m) + 1/2 sum q log(q/m), m = (p+q)/2
        const float lse_x = sh.lse_x, lse_y = sh.lse_y;
        double acc = 0.0;
        for (int64_t j = a0; j < a1; ++j) {
          const float a = to_float(x[j]);
          const float b = to_float(y[j]);
          const float lp = a - lse_x, lq = b - lse_y;
          const float pj = a == ninf ? 0.f : ea_buf[j] * isx;
          const float qj = b == ninf ? 0.f : eb_buf[j] * isy;
          const float mj = 0.5f * (pj + qj);
          if (mj <= 0.f) continue;
          const float lm = std::log(mj);
          if (pj > 0.f) acc += pj * (lp - lm);
          if (qj > 0.f) acc += qj * (lq - lm);
        }
        dpart[c] = acc;
      }
    }
    DETOX_SOCD_BARRIER(nt);
    {
      double acc = 0.0;
      for (int64_t c = 0; c < nc; ++c) acc += dpart[c];
      sh.d = div == int(Divergence::L2) ? static_cast<float>(std::sqrt(acc)) : static_cast<float>(0.5 * acc);
    }
  }
  {
    const float d = sh.d;
    if (tid == 0) *div_out = d;
    if (!std::isfinite(d)) {
      sh.skip = true;
      if (tid == 0) {
        *alpha_out = 0.f;
        *k_out = 0;
      }
    } else {
      sh.alpha = socd_alpha(d);
      sh.k = socd_k(sh.alpha, p);
      sh.skip = sh.k <= 0;  // nothing to select: the row is copied
      if (tid == 0) {
        *alpha_out = sh.alpha;
        if (sh.skip) *k_out = 0;
      }
    }
  }
  if (sh.skip) {
    copy_range(j0, j1);
    return;
  }

  // Pass 4: ordered key bits of the candidates (0 for the others) and the top-11-bit histogram.
  const float c_thr = sh.lse_y - sh.lse_x;
  uint32_t* u = s.u.data();
  {
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) {
      const float key = to_float(y[j]) - to_float(x[j]);
      u[j] = key > c_thr ? ordered_bits(key) : 0u;  // a candidate's bits are > ordered_bits(c) >= 0
    }
    uint32_t* h = tp.hist.data();
    std::fill(h, h + kBins1, 0u);
    for (int64_t j = j0; j < j1; ++j) ++h[u[j] >> 21];  // bin 0 holds exactly the non-candidates
  }
  DETOX_SOCD_BARRIER(nt);
  {
    uint32_t hm[kBins1];
    const uint32_t* h = s.tp[0].hist.data();
    if (nt > 1) {
      std::copy(h, h + kBins1, hm);
      for (int t = 1; t < nt; ++t) {
        const uint32_t* ht = s.tp[t].hist.data();
        for (int b = 0; b < kBins1; ++b) hm[b] += ht[b];
      }
      h = hm;
    }
    const int64_t npos = V - h[0];
    const int64_t m = std::min<int64_t>(sh.k, npos);
    if (tid == 0) *k_out = static_cast<int32_t>(m);
    sh.need_eq = 0;
    if (m == npos) {
      sh.thr = 0u;  // every candidate
      sh.bin = -1;
    } else {
      int64_t cum = 0;
      int b = kBins1 - 1;
      for (; b > 0; --b) {
        if (cum + h[b] >= m) break;
        cum += h[b];
      }
      sh.bin = b;
      sh.gt = cum;  // candidates in bins above b
      sh.m = m;
    }
  }

  // Pass 5: gather the boundary bin (ids ascending within a thread, threads in id order).
  if (sh.bin >= 0) {
    const uint32_t b = static_cast<uint32_t>(sh.bin);
    std::vector<uint32_t>& gu = tp.gu;
    std::vector<int32_t>& gi = tp.gi;
    gu.clear();
    gi.clear();
    for (int64_t j = j0; j < j1; ++j) {
      if ((u[j] >> 21) == b) {
        gu.push_back(u[j]);
        gi.push_back(static_cast<int32_t>(j));
      }
    }
    DETOX_SOCD_BARRIER(nt);
    {
      // Refine on bits 20..10, then 9..0, among the gathered elements.
      const int64_t need = sh.m - sh.gt;  // how many of the boundary bin to take (>= 1)
      uint32_t h2[2048];
      std::fill(h2, h2 + 2048, 0u);
      for (int t = 0; t < nt; ++t)
        for (uint32_t v : s.tp[t].gu) ++h2[(v >> 10) & 2047u];
      int64_t cum = 0;
      int b2 = 2047;
      for (; b2 > 0; --b2) {
        if (cum + h2[b2] >= need) break;
        cum += h2[b2];
      }
      const int64_t need2 = need - cum;
      uint32_t h3[1024];
      std::fill(h3, h3 + 1024, 0u);
      for (int t = 0; t < nt; ++t)
        for (uint32_t v : s.tp[t].gu)
          if (((v >> 10) & 2047u) == static_cast<uint32_t>(b2)) ++h3[v & 1023u];
      int64_t cum3 = 0;
      int b3 = 1023;
      for (; b3 > 0; --b3) {
        if (cum3 + h3[b3] >= need2) break;
        cum3 += h3[b3];
      }
      sh.thr = (b << 21) | (static_cast<uint32_t>(b2) << 10) | static_cast<uint32_t>(b3);
      sh.need_eq = need2 - cum3;  // ties at thr to take, lowest ids first (>= 1)
    }
  }

  // Pass 6: the write.
  {
    const uint32_t thr = sh.thr;
    const float alpha = sh.alpha;
    // sub = y or |y| = y with its sign bit cleared: one branch-free loop (vectorised)
    const uint32_t sign_mask = p.signed_sub ? 0xffffffffu : 0x7fffffffu;
    if (std::is_same<T, float>::value) {
      const float* xf = reinterpret_cast<const float*>(x);
      const float* yf = reinterpret_cast<const float*>(y);
      float* of = reinterpret_cast<float*>(out);
      // The product goes through memory so that it is not fused with the subtraction (an FMA
      // rounds once; the contract, and the CUDA kernel the emulation test compares bit for bit,
      // round the product and the difference separately).
      float* prod = s.ea.data();
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) prod[j] = alpha * bits_to_float(float_to_bits(yf[j]) & sign_mask);
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) {
        const float a = xf[j];
        const float nv = a - prod[j];
        const uint32_t keep = static_cast<uint32_t>(u[j] > thr) - 1u;  // all ones: leave x
        of[j] = bits_to_float((float_to_bits(nv) & ~keep) | (float_to_bits(a) & keep));
      }
    } else {
      float* prod = s.ea.data();  // as above: not fused
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) prod[j] = alpha * bits_to_float(float_to_bits(to_float(y[j])) & sign_mask);
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) {
        const float a = to_float(x[j]);
        const T xv = x[j];
        const T nv = from_float<T>(a - prod[j]);
        out[j] = u[j] > thr ? nv : xv;
      }
    }
  }
  // The ties at thr, lowest ids first: each thread writes those in its own columns, after the ties
  // of the threads before it (their gathered lists are complete since the gather's barrier).
  if (sh.need_eq > 0) {
    const uint32_t thr = sh.thr;
    int64_t left = sh.need_eq;
    for (int t = 0; t < tid && left > 0; ++t)
      for (uint32_t v : s.tp[t].gu) left -= v == thr;
    {
      const std::vector<uint32_t>& gu = tp.gu;
      const std::vector<int32_t>& gi = tp.gi;
      for (size_t i = 0; i < gu.size() && left > 0; ++i) {
        if (gu[i] != thr) continue;
        const int32_t j = gi[i];
        const float a = to_float(x[j]);
        const float b = to_float(y[j]);
        volatile float pr = sh.alpha * (p.signed_sub ? b : std::fabs(b));  // not fused (as above)
        out[j] = from_float<T>(a - pr);
        --left;
      }
    }
  }
}

}  // namespace DETOX_SOCD_NS
