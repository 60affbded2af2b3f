// Runs the fused sampling CUDA kernel's device logic (sampling_kernel.cuh) on the CPU through the
// emulation in socd_emu.h (one fiber per CUDA thread, real barriers), on inputs read from a file,
// and writes the sampled tokens; tests/test_sampling_op.py checks them against the float64
// reference like every other backend. Without arguments it runs a built-in smoke test against
// the C++ CPU kernel (csrc/cpu/sampling_cpu.h).
//
//   sampling_emu_test IN OUT [GRID]
//   IN: int64 B, V, top_k, dtype (0 float32, 1 bfloat16, 2 float16); float64 top_p, temperature;
//       the logits [B, V] as raw elements of the dtype; the uniforms [B] float32.
//   OUT: the tokens [B] int64. GRID: blocks to launch (default min(B, 3): rows are grid-strided).
//
// Build and run (from the repository root):  bash csrc/cuda/emu/run_sampling_emu_test.sh
// Not part of the extension (setup.py only compiles csrc/cuda/*.cu and csrc/cuda/*.cpp).
#define DETOX_SAMPLING_EMULATION 1
#include "socd_emu.h"

#include "../sampling_kernel.cuh"
#include "../../cpu/sampling_cpu.h"

#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

using namespace detox;

namespace {

template <typename T>
std::vector<int64_t> run_emulated(const std::vector<T>& lg, const std::vector<float>& u, const SamplingParams& p,
                                  int grid) {
  std::vector<int64_t> out(static_cast<size_t>(p.rows), -7);
  if (p.rows == 0) return out;
  cuda::dev::launch<cuda::SampSmem>(grid, cuda::kSampThreads, [&](cuda::SampSmem& S) {
    cuda::sample_top_k_top_p_block<T>(lg.data(), u.data(), out.data(), p, S);
  });
  return out;
}

template <typename T>
int from_file(FILE* f, FILE* o, SamplingParams p, int grid) {
  std::vector<T> lg(static_cast<size_t>(p.rows * p.vocab));
  std::vector<float> u(static_cast<size_t>(p.rows));
  if (fread(lg.data(), sizeof(T), lg.size(), f) != lg.size() || fread(u.data(), 4, u.size(), f) != u.size()) {
    std::fprintf(stderr, "short input\n");
    return 2;
  }
  const std::vector<int64_t> out = run_emulated(lg, u, p, grid);
  fwrite(out.data(), 8, out.size(), o);
  return 0;
}

int smoke() {
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 3.f);
  std::uniform_real_distribution<float> ud(0.f, 1.f);
  int fail = 0, total = 0;
  const int64_t Vs[] = {5, 1000, 4099};
  const int64_t ks[] = {0, 1, 7};
  const double ps[] = {1.0, 0.9, 1e-6};
  for (int64_t V : Vs)
    for (int64_t k : ks)
      for (double tp : ps) {
        SamplingParams p{4, V, V, k, tp, 0.8f};
        std::vector<float> lg(static_cast<size_t>(4 * V)), u(4);
        for (auto& x : lg) x = nd(rng);
        for (int64_t i = 0; i < V; ++i) lg[V + i] = static_cast<float>(i % 3);  // ties
        for (int64_t i = 0; i < V; ++i) lg[2 * V + i] = -__builtin_huge_valf();  // all -inf
        for (auto& x : u) x = ud(rng);
        const std::vector<int64_t> got = run_emulated(lg, u, p, 3);
        cpu::SamplingScratch s;
        for (int r = 0; r < 4; ++r) {
          const int64_t want = cpu::sample_row<float>(lg.data() + r * V, u[r], p, s);
          ++total;
          if (got[r] != want) {
            ++fail;
            std::printf("MISMATCH V=%ld k=%ld p=%g row %d: emulated %ld, cpu %ld\n", static_cast<long>(V),
                        static_cast<long>(k), tp, r, static_cast<long>(got[r]), static_cast<long>(want));
          }
        }
      }
  std::printf("emulated CUDA sampling vs the C++ CPU kernel: %d of %d rows agree\n", total - fail, total);
  return fail == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return smoke();
  FILE* f = std::fopen(argv[1], "rb");
  FILE* o = std::fopen(argv[2], "wb");
  if (!f || !o) {
    std::fprintf(stderr, "cannot open %s or %s\n", argv[1], argv[2]);
    return 2;
  }
  int64_t hdr[4];
  double opt[2];
  if (fread(hdr, 8, 4, f) != 4 || fread(opt, 8, 2, f) != 2) {
    std::fprintf(stderr, "short header\n");
    return 2;
  }
  SamplingParams p{hdr[0], hdr[1], hdr[1], hdr[2], opt[0], static_cast<float>(opt[1])};
  int grid = static_cast<int>(p.rows < 3 ? p.rows : 3);
  if (argc > 3) grid = std::atoi(argv[3]);
  int rc = 2;
  if (hdr[3] == 0) rc = from_file<float>(f, o, p, grid);
  if (hdr[3] == 1) rc = from_file<bfloat16_t>(f, o, p, grid);
  if (hdr[3] == 2) rc = from_file<half_t>(f, o, p, grid);
  std::fclose(f);
  std::fclose(o);
  return rc;
}
