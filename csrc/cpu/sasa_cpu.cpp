// Thin torch binding of the CPU SASA re-weighting kernel (sasa_cpu.h): checks, dtype dispatch,
// and a parallel loop over rows.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/sasa_checks.h"
#include "sasa_cpu.h"

namespace {

template <typename T, typename H>
void run_rows(at::Tensor& logits, const at::Tensor& ids, const at::Tensor& hidden, const at::Tensor& direction,
              const at::Tensor& midpoint, const at::Tensor& beta, const c10::optional<at::Tensor>& valid,
              at::Tensor& margins, const detox::SasaParams& p) {
  T* lg = static_cast<T*>(logits.data_ptr());
  const int64_t* id = ids.data_ptr<int64_t>();
  const H* hd = static_cast<const H*>(hidden.data_ptr());
  const float* w = direction.data_ptr<float>();
  const float* m = midpoint.data_ptr<float>();
  const float* bt = beta.data_ptr<float>();
  const bool* vd = valid.has_value() ? valid->data_ptr<bool>() : nullptr;
  float* mg = margins.data_ptr<float>();
  at::parallel_for(0, p.rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> weight;
    for (int64_t r = begin; r < end; ++r) {
      detox::cpu::sasa_row<T, H>(lg + r * p.logits_stride, id + r * p.ids_stride, hd + r * p.hidden_stride_b, w, m,
                                 bt[r], vd ? vd + r * p.valid_stride : nullptr, mg + r * p.margins_stride, p, weight);
    }
  });
}

template <typename T>
void dispatch_hidden(at::Tensor& logits, const at::Tensor& ids, const at::Tensor& hidden, const at::Tensor& direction,
                     const at::Tensor& midpoint, const at::Tensor& beta, const c10::optional<at::Tensor>& valid,
                     at::Tensor& margins, const detox::SasaParams& p) {
  switch (hidden.scalar_type()) {
    case at::kFloat:
      run_rows<T, float>(logits, ids, hidden, direction, midpoint, beta, valid, margins, p);
      break;
    case at::kBFloat16:
      run_rows<T, detox::bfloat16_t>(logits, ids, hidden, direction, midpoint, beta, valid, margins, p);
      break;
    case at::kHalf:
      run_rows<T, detox::half_t>(logits, ids, hidden, direction, midpoint, beta, valid, margins, p);
      break;
    default:
      TORCH_CHECK(false, "detox::sasa_reweight: unsupported hidden dtype ", hidden.scalar_type());
  }
}

void sasa_reweight_cpu(at::Tensor& logits, const at::Tensor& ids, const at::Tensor& hidden,
                       const at::Tensor& direction, const at::Tensor& midpoint, const at::Tensor& beta,
                       const c10::optional<at::Tensor>& valid, at::Tensor& margins, int64_t mode) {
  const detox::SasaParams p =
      detox::check_sasa_args(logits, ids, hidden, direction, midpoint, beta, valid, margins, mode, at::kCPU);
  if (p.rows == 0 || p.k == 0) return;
  switch (logits.scalar_type()) {
    case at::kFloat:
      dispatch_hidden<float>(logits, ids, hidden, direction, midpoint, beta, valid, margins, p);
      break;
    case at::kBFloat16:
      dispatch_hidden<detox::bfloat16_t>(logits, ids, hidden, direction, midpoint, beta, valid, margins, p);
      break;
    case at::kHalf:
      dispatch_hidden<detox::half_t>(logits, ids, hidden, direction, midpoint, beta, valid, margins, p);
      break;
    default:
      TORCH_CHECK(false, "detox::sasa_reweight: unsupported logits dtype ", logits.scalar_type());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(detox, CPU, m) { m.impl("sasa_reweight", &sasa_reweight_cpu); }
