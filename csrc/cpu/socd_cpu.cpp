// Thin torch binding of the CPU SoCD kernel (socd_cpu.h): checks, dtype dispatch, and the
// threads: a parallel loop over rows, or, with fewer rows than threads (and rows long enough to
// pay for a barrier), each row split over all threads. Results do not depend on the thread count.
#include <ATen/Parallel.h>
#include <omp.h>
#include <torch/library.h>

#include "../common/socd_checks.h"
#include "socd_cpu.h"

namespace {

// Rows of fewer columns are not split over threads (the barriers would cost more than they save).
constexpr int64_t kSplitMinVocab = 8192;

template <typename T>
void run_rows(const void* x, const void* y, void* out, const detox::SocdParams& p, float* alpha,
              float* div, int32_t* k) {
  const T* xb = static_cast<const T*>(x);
  const T* yb = static_cast<const T*>(y);
  T* ob = static_cast<T*>(out);
  const int nt = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (nt > 1 && p.rows < nt && p.vocab >= kSplitMinVocab) {
    thread_local detox::cpu::RowScratch tl_scratch;
    // a plain reference: inside the parallel region the name of a thread_local would be each
    // worker's own (unprepared) copy
    detox::cpu::RowScratch& scratch = tl_scratch;
    scratch.prepare(p.vocab, nt);
    for (int64_t r = 0; r < p.rows; ++r) {
      const T* xr = xb + r * p.x_stride;
      const T* yr = yb + r * p.y_stride;
      T* orow = ob + r * p.out_stride;
      int team = 1;
#pragma omp parallel num_threads(nt)
      {
#pragma omp single
        team = omp_get_num_threads();  // implicit barrier: every thread sees the team size
        if (team == nt) {
          detox::cpu::socd_row_mt<T>(xr, yr, orow, p, alpha + r, div + r, k + r, scratch,
                                     omp_get_thread_num(), nt);
        }
      }
      if (team != nt) {  // fewer threads than asked for: the row on this thread
        detox::cpu::socd_row<T>(xr, yr, orow, p, alpha + r, div + r, k + r, scratch);
        scratch.prepare(p.vocab, nt);
      }
    }
    return;
  }
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
