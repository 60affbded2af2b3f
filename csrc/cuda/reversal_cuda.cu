// Launcher of the toxification-reversal kernel (torch-free).
#include <cuda_runtime.h>

#include "reversal_cuda.h"
#include "reversal_kernel.cuh"

namespace detox {
namespace cuda {

namespace {

template <typename T>
cudaError_t launch_typed(void* o, const void* delta, const void* e, const ReversalParams& p, cudaStream_t stream) {
  const size_t smem = (static_cast<size_t>(p.heads * p.head_dim) + 2 * (kReversalThreads / 32)) * sizeof(float);
  if (smem > 48 * 1024) {
    int dev = 0, optin = 0;
    cudaError_t err = cudaGetDevice(&dev);
    if (err != cudaSuccess) return err;
    err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (err != cudaSuccess) return err;
    if (smem > static_cast<size_t>(optin)) return cudaErrorInvalidValue;
    err = cudaFuncSetAttribute(reversal_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  const int64_t max_grid = 65535 * 8;
  const unsigned grid = static_cast<unsigned>(p.rows < max_grid ? p.rows : max_grid);
  reversal_kernel<T><<<grid, kReversalThreads, smem, stream>>>(static_cast<T*>(o), static_cast<const T*>(delta),
                                                               static_cast<const T*>(e), p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_reversal(ReversalDType dtype, void* o, const void* delta, const void* e_neg,
                            const ReversalParams& p, cudaStream_t stream) {
  if (p.rows <= 0 || p.heads * p.head_dim <= 0) return cudaSuccess;
  switch (dtype) {
    case ReversalDType::F32:
      return launch_typed<float>(o, delta, e_neg, p, stream);
    case ReversalDType::F16:
      return launch_typed<half_t>(o, delta, e_neg, p, stream);
    case ReversalDType::BF16:
      return launch_typed<bfloat16_t>(o, delta, e_neg, p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace detox
