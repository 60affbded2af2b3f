// Thin torch binding of the toxification-reversal CUDA kernel: argument checks, device guard,
// current stream, dtype mapping; the launch itself is torch-free (reversal_cuda.cu).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/reversal_checks.h"
#include "reversal_cuda.h"

namespace {

void reverse_toxification_cuda(at::Tensor& o, const at::Tensor& delta, const at::Tensor& e_neg, double norm_exp,
                               double sim_exp, bool renorm) {
  const detox::ReversalParams p =
      detox::check_reversal_args(o, delta, e_neg, norm_exp, sim_exp, renorm, at::kCUDA);
  if (p.rows == 0 || p.heads * p.head_dim == 0) return;
  detox::cuda::ReversalDType dtype;
  switch (o.scalar_type()) {
    case at::kFloat:
      dtype = detox::cuda::ReversalDType::F32;
      break;
    case at::kHalf:
      dtype = detox::cuda::ReversalDType::F16;
      break;
    case at::kBFloat16:
      dtype = detox::cuda::ReversalDType::BF16;
      break;
    default:
      TORCH_CHECK(false, "detox::reverse_toxification_: unsupported dtype ", o.scalar_type());
  }
  const c10::cuda::CUDAGuard guard(o.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(o.device().index()).stream();
  C10_CUDA_CHECK(detox::cuda::launch_reversal(dtype, o.data_ptr(), delta.data_ptr(), e_neg.data_ptr(), p, stream));
}

}  // namespace

TORCH_LIBRARY_IMPL(detox, CUDA, m) { m.impl("reverse_toxification_", &reverse_toxification_cuda); }
