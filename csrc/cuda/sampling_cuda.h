// Torch-free launcher of the fused sampling CUDA kernel (sampling_kernel.cuh); the torch binding
// is sampling_binding.cpp.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "../common/sampling_params.h"
#include "socd_cuda.h"  // detox::cuda::DType

namespace detox {
namespace cuda {

// Samples one token per row of `logits` [p.rows, p.vocab] (dtype `logits_dtype`, row stride
// p.logits_stride) with `uniform` [B] f32 into `out` [B] int64. Asynchronous on `stream`;
// returns cudaGetLastError() after the launch (no launch when p.rows == 0).
cudaError_t launch_sample_top_k_top_p(DType logits_dtype, const void* logits, const float* uniform, int64_t* out,
                                      const SamplingParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace detox
