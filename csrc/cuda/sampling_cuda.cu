// Launcher of the fused sampling CUDA kernel (sampling_kernel.cuh): dtype dispatch; no torch
// headers, no host synchronisation.
#include "sampling_cuda.h"

#include "sampling_kernel.cuh"

namespace detox {
namespace cuda {
namespace {

constexpr int64_t kMaxGrid = 65535 * 16;

template <typename T>
cudaError_t launch_typed(const void* logits, const float* uniform, int64_t* out, const SamplingParams& p,
                         cudaStream_t stream) {
  const int64_t grid = p.rows < kMaxGrid ? p.rows : kMaxGrid;
  sample_top_k_top_p_kernel<T><<<static_cast<unsigned>(grid), kSampThreads, 0, stream>>>(
      static_cast<const T*>(logits), uniform, out, p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_sample_top_k_top_p(DType logits_dtype, const void* logits, const float* uniform, int64_t* out,
                                      const SamplingParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  switch (logits_dtype) {
    case DType::F32:
      return launch_typed<float>(logits, uniform, out, p, stream);
    case DType::F16:
      return launch_typed<half_t>(logits, uniform, out, p, stream);
    case DType::BF16:
      return launch_typed<bfloat16_t>(logits, uniform, out, p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace detox
