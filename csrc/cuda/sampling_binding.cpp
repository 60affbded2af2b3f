// Thin torch binding of the fused sampling CUDA kernel: argument checks, device guard, current
// stream, dtype mapping; the launch itself is torch-free (sampling_cuda.cu).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/sampling_checks.h"
#include "sampling_cuda.h"

namespace {

detox::cuda::DType to_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return detox::cuda::DType::F32;
    case at::kHalf:
      return detox::cuda::DType::F16;
    case at::kBFloat16:
      return detox::cuda::DType::BF16;
    default:
      TORCH_CHECK(false, "detox::sample_top_k_top_p: unsupported logits dtype ", t.scalar_type());
  }
}

void sample_top_k_top_p_cuda(const at::Tensor& logits, const at::Tensor& uniform, at::Tensor& out, int64_t top_k,
                             double top_p, double temperature) {
  const detox::SamplingParams p =
      detox::check_sampling_args(logits, uniform, out, top_k, top_p, temperature, at::kCUDA);
  if (p.rows == 0) return;
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(logits.device().index()).stream();
  C10_CUDA_CHECK(detox::cuda::launch_sample_top_k_top_p(to_dtype(logits), logits.data_ptr(),
                                                        uniform.data_ptr<float>(), out.data_ptr<int64_t>(), p,
                                                        stream));
}

}  // namespace

TORCH_LIBRARY_IMPL(detox, CUDA, m) { m.impl("sample_top_k_top_p", &sample_top_k_top_p_cuda); }
