// Torch-free launcher of the toxification-reversal CUDA kernel (reversal_kernel.cuh); the torch
// binding is reversal_binding.cpp.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "../common/reversal_params.h"

namespace detox {
namespace cuda {

enum class ReversalDType { F32, F16, BF16 };

// Applies the reversal in place to `p.rows` rows of o (device pointers; rows of H*D contiguous
// values at strides p.o_stride / p.d_stride; e_neg contiguous [H, D]). Asynchronous on `stream`
// (no host synchronisation, CUDA-graph capturable). Returns cudaGetLastError() after the launch
// (cudaSuccess and no launch when there is nothing to do); cudaErrorInvalidValue when a row does
// not fit in the device's shared memory.
cudaError_t launch_reversal(ReversalDType dtype, void* o, const void* delta, const void* e_neg,
                            const ReversalParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace detox
