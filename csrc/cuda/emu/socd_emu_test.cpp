// Runs the SoCD CUDA kernel's device logic (socd_kernel.cuh) on the CPU through the emulation in
// socd_emu.h, and checks it against the C++ CPU kernel (csrc/cpu/socd_cpu.h) and an exact
// selection rebuilt from the contract: the m largest keys y - x (float32), ties by lower id,
// out = x - alpha*|y| (or alpha*y) in float32 rounded to the dtype, bit for bit.
//
// Build and run (from the repository root):  bash csrc/cuda/emu/run_emu_test.sh
// Not part of the extension (setup.py only compiles csrc/cuda/*.cu and csrc/cuda/*.cpp).
#include <map>
#include <string>
std::map<std::string, long>& trace_counts() {
  static std::map<std::string, long> m;
  return m;
}
#define SOCD_TRACE(what) (++trace_counts()[what])
#include "socd_emu.h"

#include "../socd_kernel.cuh"
#include "../../cpu/socd_cpu.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

using namespace detox;

namespace {

int g_fail = 0, g_pass = 0, g_m_off_by_one = 0;
double g_worst_d = 0;

template <typename T>
T make(float v) {
  return from_float<T>(v);
}
template <typename T>
uint32_t bits_of(const T& v) {
  if constexpr (sizeof(T) == 4) {
    return float_to_bits(v);
  } else {
    return v.bits;
  }
}

struct Case {
  std::string name;
  int rows, V, W;
  int div;
  int64_t k_min, k_max;
  bool k_ceil, signed_sub, inplace, misalign;
  int grid;
  // generator: 0 normal, 1 small integers (ties), 2 normal with -inf, 3 invalid mix, 4 x == y
  int gen;
  float scale;
};

template <typename T>
void fill_row(std::mt19937& rng, const Case& c, int row, T* x, T* y) {
  std::normal_distribution<float> nd(0.f, c.scale);
  std::uniform_int_distribution<int> ui(-3, 3);
  std::uniform_real_distribution<float> u01(0.f, 1.f);
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int j = 0; j < c.W; ++j) {
    float a, b;
    switch (c.gen) {
      case 1:
        a = static_cast<float>(ui(rng));
        b = static_cast<float>(ui(rng));
        break;
      case 4:
        a = nd(rng);
        b = a;
        break;
      default:
        a = nd(rng);
        b = 0.7f * a + nd(rng);
    }
    if (c.gen == 2 || c.gen == 3) {
      const float r = u01(rng);
      if (r < 0.05f) a = ninf;
      else if (r < 0.10f) b = ninf;
      else if (r < 0.13f) a = b = ninf;
    }
    x[j] = make<T>(a);
    y[j] = make<T>(b);
  }
  if (c.gen == 3) {  // per-row invalidity patterns
    const int V = c.V;
    switch (row % 6) {
      case 0:
        if (V > 0) x[V / 2] = make<T>(std::numeric_limits<float>::quiet_NaN());
        break;
      case 1:
        if (V > 0) y[V / 3] = make<T>(std::numeric_limits<float>::infinity());
        break;
      case 2:
        for (int j = 0; j < V; ++j) x[j] = make<T>(ninf);
        break;
      case 3:
        for (int j = 0; j < V; ++j) y[j] = make<T>(ninf);
        break;
      case 4:  // NaN in the padded tail only: the row stays valid
        if (c.W > V) x[c.W - 1] = make<T>(std::numeric_limits<float>::quiet_NaN());
        break;
      default:
        break;
    }
  }
}

template <typename T, int BLOCK, int CAP, int VE, int CLUSTER = 0>
void run_case(const Case& c, std::mt19937& rng) {
  // Row stride: W rounded up to a multiple of 8 elements (16 bytes for 16-bit types) plus an
  // optional one-element misalignment of the whole buffer (then only VE == 1 is valid).
  const int64_t stride = ((c.W + 7) / 8) * 8 + (c.misalign ? 8 : 0);
  const int64_t off = c.misalign ? 1 : 0;
  std::vector<T> xbuf(c.rows * stride + 16), ybuf(c.rows * stride + 16), obuf(c.rows * stride + 16);
  T* xa = xbuf.data() + off;
  T* ya = ybuf.data() + off;
  T* oa = obuf.data() + off;
  for (int r = 0; r < c.rows; ++r) fill_row<T>(rng, c, r, xa + r * stride, ya + r * stride);
  std::vector<T> x0(xbuf);  // pristine copy of the base logits
  for (auto& v : obuf) v = make<T>(12345.f);

  SocdParams p;
  p.rows = c.rows;
  p.cols = c.W;
  p.vocab = c.V;
  p.x_stride = stride;
  p.y_stride = stride;
  p.out_stride = stride;
  p.k_min = c.k_min;
  p.k_max = c.k_max;
  p.divergence = c.div;
  p.k_ceil = c.k_ceil;
  p.signed_sub = c.signed_sub;

  std::vector<float> alpha(c.rows, -1.f), div(c.rows, -1.f);
  std::vector<int32_t> kk(c.rows, -1);
  T* out = c.inplace ? xa : oa;
  if (CLUSTER) {
    const int64_t chunk = cuda::socd::cluster_chunk(c.W, VE, CLUSTER);
    const size_t bytes = cuda::socd::cluster_smem_bytes<T, BLOCK>(chunk);
    const int grid = c.grid * CLUSTER;
    cuda::dev::launch_raw(grid, BLOCK, CLUSTER, bytes, [&](void* s) {
      cuda::socd::socd_cluster_rows<T, BLOCK, VE>(xa, ya, out, p, chunk, c.inplace, alpha.data(), div.data(),
                                                  kk.data(), static_cast<unsigned char*>(s));
    });
  } else {
    using Sm = cuda::socd::Smem<BLOCK, CAP>;
    cuda::dev::launch<Sm>(c.grid, BLOCK, [&](Sm& s) {
      cuda::socd::socd_rows<T, BLOCK, CAP, VE>(xa, ya, out, p, c.inplace, alpha.data(), div.data(), kk.data(), s);
    });
  }

  // CPU kernel on the pristine inputs.
  const T* xp = x0.data() + off;
  std::vector<T> cpu_out(c.rows * stride);
  cpu::RowScratch scratch;
  int bad_rows = 0;
  std::string why;
  for (int r = 0; r < c.rows; ++r) {
    const T* xr = xp + r * stride;
    const T* yr = ya + r * stride;
    const T* orow = out + r * stride;
    float ca, cd;
    int32_t ck;
    cpu::socd_row<T>(xr, yr, cpu_out.data() + r * stride, p, &ca, &cd, &ck, scratch);
    const float ga = alpha[r], gd = div[r];
    const int32_t gk = kk[r];
    char buf[512], msg[256];
    auto fail = [&](const char* what) {
      if (bad_rows++ < 3) {
        std::snprintf(buf, sizeof buf, "\n    row %d: %s (gpu a=%g d=%g k=%d | cpu a=%g d=%g k=%d)", r, what, ga, gd, gk,
                      ca, cd, ck);
        why += buf;
      }
    };
    // divergence and alpha
    if (std::isnan(cd) != std::isnan(gd)) {
      fail("divergence NaN mismatch");
      continue;
    }
    if (std::isfinite(cd) != std::isfinite(gd)) {
      fail("divergence finiteness mismatch");
      continue;
    }
    if (std::isfinite(cd)) {
      const double err = std::fabs(double(gd) - double(cd)) / (1e-6 + std::fabs(double(cd)));
      g_worst_d = std::max(g_worst_d, std::fabs(double(gd) - double(cd)) > 1e-6 ? err : 0.0);
      if (std::fabs(double(gd) - double(cd)) > 1e-6 + 2e-4 * std::fabs(double(cd))) fail("divergence differs");
      if (ga != socd_alpha(gd)) fail("alpha != socd_alpha(d)");
    } else if (ga != 0.f) {
      fail("alpha not 0 for a non-finite divergence");
    }
    if (std::abs(gk - ck) > 1) fail("k differs by more than one");
    if (gk != ck) ++g_m_off_by_one;
    // exact selection for the kernel's own m and alpha
    std::vector<int> order(c.V);
    std::vector<float> key(c.V);
    for (int j = 0; j < c.V; ++j) {
      const float kj = to_float(yr[j]) - to_float(xr[j]);
      key[j] = std::isnan(kj) ? -std::numeric_limits<float>::infinity() : kj;
    }
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return key[a] > key[b]; });
    std::vector<char> sel(c.V, 0);
    for (int i = 0; i < gk && i < c.V; ++i) sel[order[i]] = 1;
    int first_bad = -1;
    for (int j = 0; j < c.W; ++j) {
      uint32_t want;
      if (j < c.V && sel[j]) {
        const float a = to_float(xr[j]), b = to_float(yr[j]);
        volatile float prod = ga * (c.signed_sub ? b : std::fabs(b));
        volatile float res = a - prod;
        want = bits_of(from_float<T>(res));
      } else {
        want = bits_of(xr[j]);
      }
      if (bits_of(orow[j]) != want) {
        first_bad = j;
        break;
      }
    }
    if (first_bad >= 0) {
      std::snprintf(msg, sizeof msg, "output differs at column %d (selected=%d)", first_bad,
                    first_bad < c.V ? int(sel[first_bad]) : -1);
      fail(msg);
    }
    // when the kernel and the CPU agree on m and alpha, the outputs must be identical
    if (gk == ck && ga == ca && first_bad < 0) {
      for (int j = 0; j < c.W; ++j) {
        if (bits_of(orow[j]) != bits_of(cpu_out[r * stride + j])) {
          fail("output differs from the CPU kernel");
          break;
        }
      }
    }
  }
  // columns outside the rows (padding between rows) must be untouched
  if (!c.inplace) {
    for (int r = 0; r < c.rows; ++r)
      for (int64_t j = c.W; j < stride; ++j)
        if (r * stride + j + off < static_cast<int64_t>(obuf.size()) && bits_of(oa[r * stride + j]) != bits_of(make<T>(12345.f))) {
          if (bad_rows++ < 3) why += "\n    write past the row end";
          r = c.rows;
          break;
        }
  }
  const char* tname = sizeof(T) == 4 ? "f32" : std::is_same<T, half_t>::value ? "f16" : "bf16";
  if (bad_rows) {
    ++g_fail;
    std::printf("FAIL %-28s %s %s%d B%d CAP%d VE%d: %d bad rows%s\n", c.name.c_str(), tname,
                CLUSTER ? "cluster" : "single", CLUSTER, BLOCK, CAP, VE, bad_rows, why.c_str());
  } else {
    ++g_pass;
  }
  std::fflush(stdout);
}

template <typename T, int BLOCK, int CAP, int CLUSTER = 0>
void run_both(const Case& c, std::mt19937& rng) {
  constexpr int kVec = 16 / sizeof(T);
  Case cs = c;
  cs.misalign = true;
  run_case<T, BLOCK, CAP, 1, CLUSTER>(cs, rng);
  cs.misalign = false;
  run_case<T, BLOCK, CAP, kVec, CLUSTER>(cs, rng);
}

template <typename T>
void run_all(std::mt19937& rng, bool quick) {
  std::vector<Case> cases;
  const int divs[] = {0, 1, 2, 3, 4, 5};
  auto add = [&](Case c) { cases.push_back(c); };
  for (int dv : divs) {
    add({"normal", 5, 1000, 1000, dv, 10, 500, true, false, false, false, 2, 0, 3.f});
    add({"normal-pad", 3, 997, 1013, dv, 10, 498, dv % 2 == 0, dv == 5, dv == 3, false, 3, 0, 2.f});
    add({"ties", 4, 700, 709, dv, 10, 350, true, false, false, false, 4, 1, 1.f});
    add({"neg-inf", 4, 900, 900, dv, 10, 450, true, false, true, false, 1, 2, 3.f});
  }
  add({"invalid", 12, 300, 305, 5, 10, 150, true, false, false, false, 3, 3, 2.f});
  add({"invalid-inplace", 12, 300, 305, 0, 10, 150, true, true, true, false, 5, 3, 2.f});
  add({"x==y", 3, 500, 500, 5, 10, 250, true, false, false, false, 3, 4, 2.f});
  add({"kmax0", 3, 500, 503, 5, 0, 0, true, false, false, false, 3, 0, 2.f});
  add({"kmax0-inplace-kl", 3, 500, 503, 0, 0, 0, true, false, true, false, 3, 0, 2.f});
  add({"kmin-all", 3, 600, 600, 5, 600, 600, true, false, false, false, 3, 0, 2.f});
  add({"kmin-all-ties", 3, 600, 600, 4, 600, 600, true, true, false, false, 3, 1, 1.f});
  add({"k1", 3, 600, 600, 5, 1, 1, true, false, false, false, 3, 0, 2.f});
  add({"k1-ties", 3, 600, 600, 5, 1, 1, true, false, true, false, 3, 1, 1.f});
  add({"tiny-V1", 3, 1, 1, 5, 10, 0, true, false, false, false, 3, 0, 2.f});
  add({"tiny-V1-kmin", 3, 1, 3, 2, 1, 1, true, false, false, false, 3, 0, 2.f});
  add({"tiny-V7", 4, 7, 9, 3, 2, 3, true, false, false, false, 2, 0, 2.f});
  add({"V0", 2, 0, 5, 5, 10, 0, true, false, false, false, 2, 0, 2.f});
  add({"W0", 2, 0, 0, 5, 10, 0, true, false, false, false, 2, 0, 2.f});
  add({"grid1", 6, 400, 410, 1, 10, 200, true, false, false, false, 1, 0, 2.f});
  add({"large", 2, quick ? 6000 : 20000, quick ? 6003 : 20005, 5, 10, quick ? 3000 : 10000, true, false, false, false,
       2, 0, 3.f});
  add({"large-ties", 2, quick ? 6000 : 20000, quick ? 6000 : 20000, 4, 10, quick ? 3000 : 10000, true, false, true,
       false, 2, 1, 1.f});
  // randomised sweep
  std::uniform_int_distribution<int> coin(0, 1);
  const int sweep = quick ? 24 : 120;
  for (int i = 0; i < sweep; ++i) {
    Case c;
    c.name = "random-" + std::to_string(i);
    c.rows = 1 + static_cast<int>(rng() % 4);
    c.V = 1 + static_cast<int>(rng() % (i % 4 == 0 ? 5000 : 1500));
    c.W = c.V + static_cast<int>(rng() % 3 == 0 ? rng() % 40 : 0);
    c.div = static_cast<int>(rng() % 6);
    c.k_min = static_cast<int64_t>(rng() % 30);
    c.k_max = rng() % 5 == 0 ? static_cast<int64_t>(c.V) : static_cast<int64_t>(rng() % (c.V / 2 + 1));
    c.k_ceil = coin(rng);
    c.signed_sub = coin(rng);
    c.inplace = coin(rng);
    c.misalign = false;
    c.grid = 1 + static_cast<int>(rng() % 3);
    c.gen = static_cast<int>(rng() % 4);
    c.scale = 0.05f + 5.f * std::uniform_real_distribution<float>(0.f, 1.f)(rng);
    cases.push_back(c);
  }
  for (const Case& c : cases) {
    run_both<T, 64, 128>(c, rng);    // small list: global rounds and global tie scan
    run_both<T, 128, 4096>(c, rng);  // the shared list path
    run_both<T, 64, 64, 8>(c, rng);   // the cluster path (8 CTAs per row)
    run_both<T, 64, 64, 16>(c, rng);  // 16-CTA clusters (the small-batch launch on sm_90)
  }
  if (!quick) {
    run_both<T, 512, 4096>(cases[0], rng);
    run_both<T, 512, 4096>(cases[2], rng);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "quick";
  std::mt19937 rng(1234);
  run_all<float>(rng, quick);
  run_all<half_t>(rng, quick);
  run_all<bfloat16_t>(rng, quick);
  std::printf("emulated CUDA SoCD: worst relative divergence error %.3g, rows where m differs from the CPU "
              "kernel by one: %d\n",
              g_worst_d, g_m_off_by_one);
  std::printf("paths taken (rows or rounds):\n");
  for (const auto& kv : trace_counts()) std::printf("  %-48s %ld\n", kv.first.c_str(), kv.second);
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
