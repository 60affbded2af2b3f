// Thin torch binding of the CPU SoCD kernel (socd_cpu.h): checks, dtype dispatch, and a
// parallel loop over rows.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/socd_checks.h"
#include "socd_cpu.h"

namespace {

template <typename T>
void run_rows(const void* x, const void* y, void* out, const detox::SocdParams& p, float* alpha,
              float* div, int32_t* k) {
  const T* xb = static_cast<const T*>(x);
  const T* yb = static_cast<const T*>(y);
  T* ob = static_cast<T*>(out);
  at::parallel_for(0, p.rows, 1, [&](int64_t begin, int64_t end) {
    thread_local detox::cpu::RowScratch scratch;
    for (int64_t r = begin; r < end; ++r) {
      detox::cpu::socd_row<T>(xb + r * p.x_stride, yb + r * p.y_stride, ob + r * p.out_stride, p,
                              alpha + r, div + r, k + r, scratch);
    }
  });
}

void socd_cpu(const at::Tensor& base, const at::Tensor& toxic, at::Tensor& out, at::Tensor& alpha,
              at::Tensor& divergence, at::Tensor& k, int64_t divergence_kind, int64_t k_min,
              int64_t k_max, int64_t vocab_size, bool k_ceil, bool signed_subtract) {
  const detox::SocdParams p = detox::check_socd_args(base, toxic, out, alpha, divergence, k,
                                                     divergence_kind, k_min, k_max, vocab_size,
                                                     k_ceil, signed_subtract, at::kCPU);
  float* a = alpha.data_ptr<float>();
  float* d = divergence.data_ptr<float>();
  int32_t* kk = k.data_ptr<int32_t>();
  switch (base.scalar_type()) {
    case at::kFloat:
      run_rows<float>(base.data_ptr(), toxic.data_ptr(), out.data_ptr(), p, a, d, kk);
      break;
    case at::kBFloat16:
      run_rows<detox::bfloat16_t>(base.data_ptr(), toxic.data_ptr(), out.data_ptr(), p, a, d, kk);
      break;
    case at::kHalf:
      run_rows<detox::half_t>(base.data_ptr(), toxic.data_ptr(), out.data_ptr(), p, a, d, kk);
      break;
    default:
      TORCH_CHECK(false, "detox::socd: unsupported dtype ", base.scalar_type());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(detox, CPU, m) { m.impl("socd", &socd_cpu); }
