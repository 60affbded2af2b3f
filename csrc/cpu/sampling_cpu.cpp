// Thin torch binding of the CPU fused sampling kernel (sampling_cpu.h): checks, dtype dispatch,
// a parallel loop over rows, and, when there are fewer rows than threads, the O(V) passes of a
// row (scores, exp, kept mass) split over the threads in chunks.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/sampling_checks.h"
#include "sampling_cpu.h"

namespace {

using detox::cpu::SamplingScratch;
using detox::cpu::TopPCut;

constexpr int64_t kChunk = 8192;  // columns per task of a split row

// One row with its O(V) passes split into chunks of kChunk columns over the threads.
template <typename T>
int64_t sample_row_split(const T* lg, float u, const detox::SamplingParams& p, SamplingScratch& s) {
  const int64_t V = p.vocab;
  const int64_t nc = (V + kChunk - 1) / kChunk;
  s.keys.resize(static_cast<size_t>(V));
  s.e.resize(static_cast<size_t>(V));
  uint32_t* keys = s.keys.data();
  float* e = s.e.data();
  std::vector<uint32_t> cmax(static_cast<size_t>(nc), 0u);
  std::vector<double> csum(static_cast<size_t>(nc), 0.0);
  std::vector<int64_t> clast(static_cast<size_t>(nc), -1);
  at::parallel_for(0, nc, 1, [&](int64_t b, int64_t e_) {
    for (int64_t c = b; c < e_; ++c)
      cmax[c] = detox::cpu::sampling_load(lg, c * kChunk, std::min(V, (c + 1) * kChunk), p.temperature, keys);
  });
  const uint32_t mxk = *std::max_element(cmax.begin(), cmax.end());
  const float mx = detox::sampling_key_to_float(mxk);
  if (mx == -__builtin_huge_valf()) return 0;
  const uint32_t floor = detox::sampling_top_k_on(p) ? detox::cpu::sampling_kth_key(keys, V, p.top_k, s) : 0u;
  at::parallel_for(0, nc, 1, [&](int64_t b, int64_t e_) {
    for (int64_t c = b; c < e_; ++c)
      csum[c] = detox::cpu::sampling_exp(keys, c * kChunk, std::min(V, (c + 1) * kChunk), floor, mx, e);
  });
  double zk = 0.0;
  for (double v : csum) zk += v;
  const bool tp = detox::sampling_top_p_on(p);
  TopPCut cut{0u, V};
  if (tp) cut = detox::cpu::sampling_top_p_cut(keys, e, V, floor, p.top_p * zk, s);
  at::parallel_for(0, nc, 1, [&](int64_t b, int64_t e_) {
    for (int64_t c = b; c < e_; ++c)
      csum[c] = detox::cpu::sampling_kept_mass(keys, e, c * kChunk, std::min(V, (c + 1) * kChunk), floor, tp, cut,
                                               clast[c]);
  });
  double z = 0.0;
  int64_t last = -1;
  for (int64_t c = 0; c < nc; ++c) {
    z += csum[c];
    if (clast[c] >= 0) last = clast[c];
  }
  const double target = static_cast<double>(u) * z;
  double acc = 0.0;
  for (int64_t c = 0; c < nc; ++c) {
    if (acc + csum[c] > target || c == nc - 1) {
      const int64_t id = detox::cpu::sampling_find(keys, e, c * kChunk, std::min(V, (c + 1) * kChunk), floor, tp,
                                                   cut, acc, target);
      if (id >= 0) return id;
    }
    acc += csum[c];
  }
  return last;
}

template <typename T>
void run_rows(const at::Tensor& logits, const at::Tensor& uniform, at::Tensor& out, const detox::SamplingParams& p) {
  const T* lg = static_cast<const T*>(logits.data_ptr());
  const float* u = uniform.data_ptr<float>();
  int64_t* o = out.data_ptr<int64_t>();
  const int64_t threads = at::get_num_threads();
  if (p.rows < threads && p.vocab >= 2 * kChunk && !at::in_parallel_region()) {
    SamplingScratch s;
    for (int64_t r = 0; r < p.rows; ++r) o[r] = sample_row_split<T>(lg + r * p.logits_stride, u[r], p, s);
    return;
  }
  at::parallel_for(0, p.rows, 1, [&](int64_t begin, int64_t end) {
    SamplingScratch s;
    for (int64_t r = begin; r < end; ++r) o[r] = detox::cpu::sample_row<T>(lg + r * p.logits_stride, u[r], p, s);
  });
}

void sample_top_k_top_p_cpu(const at::Tensor& logits, const at::Tensor& uniform, at::Tensor& out, int64_t top_k,
                            double top_p, double temperature) {
  const detox::SamplingParams p =
      detox::check_sampling_args(logits, uniform, out, top_k, top_p, temperature, at::kCPU);
  if (p.rows == 0) return;
  switch (logits.scalar_type()) {
    case at::kFloat:
      run_rows<float>(logits, uniform, out, p);
      break;
    case at::kBFloat16:
      run_rows<detox::bfloat16_t>(logits, uniform, out, p);
      break;
    case at::kHalf:
      run_rows<detox::half_t>(logits, uniform, out, p);
      break;
    default:
      TORCH_CHECK(false, "detox::sample_top_k_top_p: unsupported logits dtype ", logits.scalar_type());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(detox, CPU, m) { m.impl("sample_top_k_top_p", &sample_top_k_top_p_cpu); }
