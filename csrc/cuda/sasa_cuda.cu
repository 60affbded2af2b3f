// Launcher of the SASA re-weighting CUDA kernel (sasa_kernel.cuh): dtype dispatch; no torch
// headers, no host synchronisation.
#include "sasa_cuda.h"

#include "sasa_kernel.cuh"

namespace detox {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGrid = 2147483647;

template <typename T, typename H>
cudaError_t launch_typed(void* logits, const int64_t* ids, const void* hidden, const float* direction,
                         const float* midpoint, const float* beta, const bool* valid, float* margins,
                         const SasaParams& p, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(p.k) * sizeof(float);
  sasa::sasa_reweight_kernel<T, H><<<static_cast<unsigned>(p.rows), kThreads, smem, stream>>>(
      static_cast<T*>(logits), ids, static_cast<const H*>(hidden), direction, midpoint, beta, valid, margins, p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch_hidden(DType hidden_dtype, void* logits, const int64_t* ids, const void* hidden,
                            const float* direction, const float* midpoint, const float* beta, const bool* valid,
                            float* margins, const SasaParams& p, cudaStream_t stream) {
  switch (hidden_dtype) {
    case DType::F32:
      return launch_typed<T, float>(logits, ids, hidden, direction, midpoint, beta, valid, margins, p, stream);
    case DType::F16:
      return launch_typed<T, half_t>(logits, ids, hidden, direction, midpoint, beta, valid, margins, p, stream);
    case DType::BF16:
      return launch_typed<T, bfloat16_t>(logits, ids, hidden, direction, midpoint, beta, valid, margins, p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_sasa_reweight(DType logits_dtype, DType hidden_dtype, void* logits, const int64_t* ids,
                                 const void* hidden, const float* direction, const float* midpoint,
                                 const float* beta, const bool* valid, float* margins, const SasaParams& p,
                                 cudaStream_t stream) {
  if (p.rows == 0 || p.k == 0) return cudaSuccess;
  if (p.k > kSasaMaxK || p.rows > kMaxGrid) return cudaErrorInvalidValue;
  switch (logits_dtype) {
    case DType::F32:
      return dispatch_hidden<float>(hidden_dtype, logits, ids, hidden, direction, midpoint, beta, valid, margins, p,
                                    stream);
    case DType::F16:
      return dispatch_hidden<half_t>(hidden_dtype, logits, ids, hidden, direction, midpoint, beta, valid, margins, p,
                                     stream);
    case DType::BF16:
      return dispatch_hidden<bfloat16_t>(hidden_dtype, logits, ids, hidden, direction, midpoint, beta, valid, margins,
                                         p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace detox
