// Thin torch binding of the CPU toxification-reversal kernel (reversal_cpu.h): checks, dtype
// dispatch, and a parallel loop over token rows.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/reversal_checks.h"
#include "reversal_cpu.h"

namespace {

template <typename T>
void run_rows(void* o, const void* delta, const void* e, const detox::ReversalParams& p) {
  T* ob = static_cast<T*>(o);
  const T* db = static_cast<const T*>(delta);
  const T* eb = static_cast<const T*>(e);
  at::parallel_for(0, p.rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch;
    for (int64_t r = begin; r < end; ++r) {
      detox::cpu::reversal_row<T>(ob + r * p.o_stride, db + r * p.d_stride, eb, p, scratch);
    }
  });
}

void reverse_toxification_cpu(at::Tensor& o, const at::Tensor& delta, const at::Tensor& e_neg, double norm_exp,
                              double sim_exp, bool renorm) {
  const detox::ReversalParams p =
      detox::check_reversal_args(o, delta, e_neg, norm_exp, sim_exp, renorm, at::kCPU);
  if (p.rows == 0 || p.heads * p.head_dim == 0) return;
  switch (o.scalar_type()) {
    case at::kFloat:
      run_rows<float>(o.data_ptr(), delta.data_ptr(), e_neg.data_ptr(), p);
      break;
    case at::kBFloat16:
      run_rows<detox::bfloat16_t>(o.data_ptr(), delta.data_ptr(), e_neg.data_ptr(), p);
      break;
    case at::kHalf:
      run_rows<detox::half_t>(o.data_ptr(), delta.data_ptr(), e_neg.data_ptr(), p);
      break;
    default:
      TORCH_CHECK(false, "detox::reverse_toxification_: unsupported dtype ", o.scalar_type());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(detox, CPU, m) { m.impl("reverse_toxification_", &reverse_toxification_cpu); }
