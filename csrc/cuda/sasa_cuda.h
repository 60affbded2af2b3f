// Torch-free launcher of the SASA re-weighting CUDA kernel (sasa_kernel.cuh); the torch binding
// is sasa_binding.cpp.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "../common/sasa_params.h"
#include "socd_cuda.h"  // detox::cuda::DType

namespace detox {
namespace cuda {

constexpr int64_t kSasaMaxK = 4096;  // K margins in dynamic shared memory (16 KiB)

// Re-weights p.rows rows of `logits` in place (dtype `logits_dtype`) from the candidates `ids`
// [B, K] int64, `hidden` [B, K, D] (dtype `hidden_dtype`), `direction`/`midpoint` [D] f32, `beta`
// [B] f32 and the optional `valid` [B, K] (nullptr: all valid); writes `margins` [B, K] f32.
// Asynchronous on `stream`; returns cudaErrorInvalidValue when p.k > kSasaMaxK, else
// cudaGetLastError() after the launch (no launch when p.rows == 0 or p.k == 0).
cudaError_t launch_sasa_reweight(DType logits_dtype, DType hidden_dtype, void* logits, const int64_t* ids,
                                 const void* hidden, const float* direction, const float* midpoint,
                                 const float* beta, const bool* valid, float* margins, const SasaParams& p,
                                 cudaStream_t stream);

}  // namespace cuda
}  // namespace detox
