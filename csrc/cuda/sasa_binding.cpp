// Thin torch binding of the SASA re-weighting CUDA kernel: argument checks, device guard, current
// stream, dtype mapping; the launch itself is torch-free (sasa_cuda.cu).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/sasa_checks.h"
#include "sasa_cuda.h"

namespace {

detox::cuda::DType to_dtype(const at::Tensor& t, const char* what) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return detox::cuda::DType::F32;
    case at::kHalf:
      return detox::cuda::DType::F16;
    case at::kBFloat16:
      return detox::cuda::DType::BF16;
    default:
      TORCH_CHECK(false, "detox::sasa_reweight: unsupported ", what, " dtype ", t.scalar_type());
  }
}

void sasa_reweight_cuda(at::Tensor& logits, const at::Tensor& ids, const at::Tensor& hidden,
                        const at::Tensor& direction, const at::Tensor& midpoint, const at::Tensor& beta,
                        const c10::optional<at::Tensor>& valid, at::Tensor& margins, int64_t mode) {
  const detox::SasaParams p =
      detox::check_sasa_args(logits, ids, hidden, direction, midpoint, beta, valid, margins, mode, at::kCUDA);
  TORCH_CHECK(p.k <= detox::cuda::kSasaMaxK, "detox::sasa_reweight: at most ", detox::cuda::kSasaMaxK,
              " candidates per row on CUDA, got ", p.k);
  if (p.rows == 0 || p.k == 0) return;
  const detox::cuda::DType lt = to_dtype(logits, "logits"), ht = to_dtype(hidden, "hidden");
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(logits.device().index()).stream();
  C10_CUDA_CHECK(detox::cuda::launch_sasa_reweight(
      lt, ht, logits.data_ptr(), ids.data_ptr<int64_t>(), hidden.data_ptr(), direction.data_ptr<float>(),
      midpoint.data_ptr<float>(), beta.data_ptr<float>(), valid.has_value() ? valid->data_ptr<bool>() : nullptr,
      margins.data_ptr<float>(), p, stream));
}

}  // namespace

TORCH_LIBRARY_IMPL(detox, CUDA, m) { m.impl("sasa_reweight", &sasa_reweight_cuda); }
