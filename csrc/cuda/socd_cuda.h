// Torch-free launcher of the SoCD CUDA kernel (socd_kernel.cuh); the torch binding is
// socd_binding.cpp.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "../common/socd_params.h"

namespace detox {
namespace cuda {

enum class DType { F32, F16, BF16 };

// Runs SoCD on `p.rows` rows of x (base) and y (toxic), writing out (which may be x itself, with
// the same row stride) and the per-row statistics alpha, divergence and k (device pointers, one
// entry per row). Asynchronous on `stream` (no host synchronisation, CUDA-graph capturable).
// Returns cudaGetLastError() after the launch (cudaSuccess and no launch when p.rows == 0).
cudaError_t launch_socd(DType dtype, const void* x, const void* y, void* out, float* alpha, float* divergence,
                        int32_t* k, const SocdParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace detox
