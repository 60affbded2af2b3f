// Thin torch binding of the SoCD CUDA kernel: argument checks, device guard, current stream,
// dtype mapping; the launch itself is torch-free (socd_cuda.cu). Compiled by the host compiler
// only where torch has CUDA (setup.py adds csrc/cuda/*.cpp when it builds the CUDA kernels).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // c10::cuda::getCurrentCUDAStream (what at::cuda:: re-exports)
#include <torch/library.h>

#include "../common/socd_checks.h"
#include "socd_cuda.h"

namespace {

void socd_cuda(const at::Tensor& base, const at::Tensor& toxic, at::Tensor& out, at::Tensor& alpha,
               at::Tensor& divergence, at::Tensor& k, int64_t divergence_kind, int64_t k_min, int64_t k_max,
               int64_t vocab_size, bool k_ceil, bool signed_subtract) {
  const detox::SocdParams p = detox::check_socd_args(base, toxic, out, alpha, divergence, k, divergence_kind,
                                                     k_min, k_max, vocab_size, k_ceil, signed_subtract, at::kCUDA);
  if (p.rows == 0) return;
  detox::cuda::DType dtype;
  switch (base.scalar_type()) {
    case at::kFloat:
      dtype = detox::cuda::DType::F32;
      break;
    case at::kHalf:
      dtype = detox::cuda::DType::F16;
      break;
    case at::kBFloat16:
      dtype = detox::cuda::DType::BF16;
      break;
    default:
      TORCH_CHECK(false, "detox::socd: unsupported dtype ", base.scalar_type());
  }
  const c10::cuda::CUDAGuard guard(base.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(base.device().index()).stream();
  C10_CUDA_CHECK(detox::cuda::launch_socd(dtype, base.data_ptr(), toxic.data_ptr(), out.data_ptr(),
                                          alpha.data_ptr<float>(), divergence.data_ptr<float>(),
                                          k.data_ptr<int32_t>(), p, stream));
}

}  // namespace

TORCH_LIBRARY_IMPL(detox, CUDA, m) { m.impl("socd", &socd_cuda); }
