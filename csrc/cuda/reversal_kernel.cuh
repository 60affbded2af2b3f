// Toxification-reversal CUDA kernel (header-only, free of torch headers). Contract: the module
// docstring of detox_kernels/reference/reversal.py; mirrored from csrc/cpu/reversal_cpu.h.
//
// One CTA per token row (grid-stride over rows), kThreads threads = kThreads/32 warps:
//   1. warp w takes heads w, w + nwarps, ...: its lanes read o, delta and e_neg of the head once,
//      keep o (as float) in shared memory, and warp-reduce <e, o>, |o|^2, |e|^2, |delta|^2;
//      lane 0's scale s = (1 + |delta|)^norm_exp * (1 + relu(cos))^sim_exp is broadcast;
//   2. the same warp forms o' = o - s * delta in shared memory (delta is re-read, from L1/L2) and
//      accumulates |o|^2 and |o'|^2 of the row;
//   3. a block reduction of the two sums gives ratio = |o| / |o'| (1 without renorm or when
//      |o'| = 0), and the row is written once: o = o' * ratio.
// So o is read once and written once from global memory; the row lives in H*D*4 bytes of
// dynamic shared memory. Float accumulation; the two row norms are summed in the same order, so
// delta = 0 leaves o unchanged bit for bit.
#pragma once

#include <math.h>
#include <stdint.h>

#include "../common/reversal_params.h"
#include "../common/socd_params.h"

namespace detox {
namespace cuda {

constexpr int kReversalThreads = 256;

__device__ __forceinline__ float rev_warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <typename T>
__global__ void __launch_bounds__(kReversalThreads) reversal_kernel(T* __restrict__ o, const T* __restrict__ delta,
                                                                    const T* __restrict__ e, ReversalParams p) {
  extern __shared__ float smem[];
  constexpr int kWarps = kReversalThreads / 32;
  float* row = smem;                                                 // [H * D] o, then o'
  float* red = smem + p.heads * p.head_dim;                          // [2 * kWarps]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int H = static_cast<int>(p.heads), D = static_cast<int>(p.head_dim), n = H * D;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    T* orow = o + r * p.o_stride;
    const T* drow = delta + r * p.d_stride;
    float before = 0.f, after = 0.f;
    for (int h = warp; h < H; h += kWarps) {
      const int base = h * D;
      float dot = 0.f, oo = 0.f, ee = 0.f, dd = 0.f;
      for (int i = lane; i < D; i += 32) {
        const float ov = to_float(orow[base + i]);
        const float dv = to_float(drow[base + i]);
        const float ev = to_float(e[base + i]);
        row[base + i] = ov;
        dot = fmaf(ev, ov, dot);
        oo = fmaf(ov, ov, oo);
        ee = fmaf(ev, ev, ee);
        dd = fmaf(dv, dv, dd);
      }
      dot = rev_warp_sum(dot);
      oo = rev_warp_sum(oo);
      ee = rev_warp_sum(ee);
      dd = rev_warp_sum(dd);
      const float denom = sqrtf(ee) * sqrtf(oo);
      const float cs = denom > 0.f ? dot / denom : 0.f;
      const float s = powf(1.f + sqrtf(dd), p.norm_exp) * powf(1.f + (cs > 0.f ? cs : 0.f), p.sim_exp);
      for (int i = lane; i < D; i += 32) {
        const float ov = row[base + i];
        const float nv = ov - s * to_float(drow[base + i]);
        row[base + i] = nv;
        before = fmaf(ov, ov, before);
        after = fmaf(nv, nv, after);
      }
    }
    float ratio = 1.f;
    if (p.renorm) {
      before = rev_warp_sum(before);
      after = rev_warp_sum(after);
      if (lane == 0) {
        red[warp] = before;
        red[kWarps + warp] = after;
      }
      __syncthreads();
      float b = 0.f, a = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        b += red[w];
        a += red[kWarps + w];
      }
      if (a != 0.f) ratio = sqrtf(b) / sqrtf(a);
    } else {
      __syncthreads();
    }
    for (int i = threadIdx.x; i < n; i += kReversalThreads) orow[i] = from_float<T>(row[i] * ratio);
    __syncthreads();  // row and red are reused by the next row
  }
}

}  // namespace cuda
}  // namespace detox
