// SASA re-weighting CUDA kernel, header-only and free of torch headers. Semantics (the kernel
// contract): detox_kernels/reference/sasa.py. One CTA per row:
//   1. margins: one warp per candidate (strided over K), lanes strided over D, float32
//      accumulation and a warp-shuffle sum; written to `margins` and to shared memory;
//   2. warp 0: the NaN-propagating max and (softmax) the sum of exp over the candidates that
//      take part;
//   3. weights in shared memory, then one thread per candidate: the first occurrence of an id
//      adds beta * (sum of the weights of all its occurrences, in k order) to the logit.
// No atomics, no host synchronisation; dynamic shared memory K floats.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "../common/sasa_params.h"

namespace detox {
namespace cuda {
namespace sasa {

constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float nan_max(float a, float b) {
  if (a != a) return a;
  if (b != b) return b;
  return a > b ? a : b;
}

template <typename T, typename H>
__global__ void __launch_bounds__(256) sasa_reweight_kernel(T* __restrict__ logits, const int64_t* __restrict__ ids,
                                                            const H* __restrict__ hidden,
                                                            const float* __restrict__ direction,
                                                            const float* __restrict__ midpoint,
                                                            const float* __restrict__ beta,
                                                            const bool* __restrict__ valid,
                                                            float* __restrict__ margins, SasaParams p) {
  extern __shared__ float s_w[];  // K margins, then K weights (in place)
  __shared__ float s_mx, s_inv;
  const int64_t row = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int64_t K = p.k, D = p.d;
  const int64_t* rid = ids + row * p.ids_stride;
  const bool* rvalid = p.has_valid ? valid + row * p.valid_stride : nullptr;
  T* rlog = logits + row * p.logits_stride;
  // 1. margins
  for (int64_t k = warp; k < K; k += nwarps) {
    const H* h = hidden + row * p.hidden_stride_b + k * p.hidden_stride_k;
    float acc = 0.f;
    for (int64_t j = lane; j < D; j += 32) acc += (to_float(h[j]) - midpoint[j]) * direction[j];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(kFull, acc, o);
    if (lane == 0) {
      s_w[k] = acc;
      margins[row * p.margins_stride + k] = acc;
    }
  }
  __syncthreads();
  // 2. max and sum over the candidates that take part
  if (warp == 0) {
    const float ninf = -__int_as_float(0x7f800000);
    float mx = ninf;
    int any = 0;
    for (int64_t k = lane; k < K; k += 32) {
      if (sasa_takes_part(rid, rvalid, k, p.vocab)) {
        mx = nan_max(mx, s_w[k]);
        any = 1;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      mx = nan_max(mx, __shfl_xor_sync(kFull, mx, o));
      any |= __shfl_xor_sync(kFull, any, o);
    }
    if (mx == mx && (mx == ninf || mx == -ninf)) mx = 0.f;
    float s = 0.f;
    if (p.mode == int32_t(SasaMode::Softmax)) {
      for (int64_t k = lane; k < K; k += 32)
        if (sasa_takes_part(rid, rvalid, k, p.vocab)) s += expf(s_w[k] - mx);
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(kFull, s, o);
    }
    if (lane == 0) {
      s_mx = mx;
      s_inv = (any && s > 0.f) ? 1.f / s : 0.f;  // all margins -inf: zero weights, as the reference
    }
  }
  __syncthreads();
  const float mx = s_mx, inv = s_inv;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const bool take = sasa_takes_part(rid, rvalid, k, p.vocab);
    float w = 0.f;
    if (take) w = p.mode == int32_t(SasaMode::Tilt) ? s_w[k] : expf(s_w[k] - mx) * inv;
    s_w[k] = w;  // each thread rewrites only its own entries
  }
  __syncthreads();
  // 3. one write per distinct id
  const float b = beta[row];
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    if (!sasa_takes_part(rid, rvalid, k, p.vocab)) continue;
    const int64_t id = rid[k];
    bool first = true;
    for (int64_t j = 0; j < k && first; ++j)
      if (rid[j] == id && sasa_takes_part(rid, rvalid, j, p.vocab)) first = false;
    if (!first) continue;
    float total = s_w[k];
    for (int64_t j = k + 1; j < K; ++j)
      if (rid[j] == id && sasa_takes_part(rid, rvalid, j, p.vocab)) total += s_w[j];
    const float add = __fmul_rn(b, total);
    rlog[id] = from_float<T>(__fadd_rn(to_float(rlog[id]), add));
  }
}

}  // namespace sasa
}  // namespace cuda
}  // namespace detox
