// Fused top-k/top-p sampling CUDA kernel (header-only, free of torch headers). Semantics: the
// kernel contract in detox_kernels/reference/sampling.py, mirrored from the CPU kernel
// csrc/cpu/sampling_cpu.h.
//
// One CTA of kSampThreads threads per row (grid-stride over rows), no sort of the vocabulary:
//   1. the maximum key (keys: ordered_bits of x = logit / temperature, IEEE division);
//   2. top-k: radix select of the k-th largest key, 4 rounds of 8 bits over the row with a
//      shared-memory count histogram (atomics) of the keys that match the prefix found so far;
//   3. top-p: the kept mass Z (block sum), then the same radix select on the probability mass
//      per bucket (float atomics) of the cut-off value v*, the mass G above it and its ties; the
//      number of kept ties n (sampling_ties_kept), and, when n is below the tie count, the id
//      of the n-th tie in id order (a block scan of per-thread tie counts over contiguous
//      segments of the row);
//   4. inverse CDF: each thread sums the kept mass of its contiguous segment, an inclusive block
//      scan gives the segment offsets and Z, and the thread whose segment holds u * Z walks it.
// The float atomics make the bucket masses depend on the order in which the threads add to
// them, so a top-p cut-off within float32 rounding of a boundary may change from run to run;
// everything else is deterministic.
//
// The device logic is written against a few primitives (namespace samp) so that it also compiles
// on the host with DETOX_SAMPLING_EMULATION on top of emu/socd_emu.h (one fiber per CUDA thread;
// tests: emu/sampling_emu_test.cpp).
#pragma once

#include <math.h>
#include <stdint.h>

#include "../common/sampling_params.h"

#if defined(__CUDACC__)
#define SAMP_DEV __device__ __forceinline__
#elif defined(DETOX_SAMPLING_EMULATION)
#define SAMP_DEV inline
#else
#error "sampling_kernel.cuh is compiled by nvcc (or by the CPU emulation with DETOX_SAMPLING_EMULATION)"
#endif

namespace detox {
namespace cuda {

constexpr int kSampThreads = 512;

namespace samp {
#if defined(__CUDACC__)
SAMP_DEV unsigned thread_id() { return threadIdx.x; }
SAMP_DEV int64_t block_id() { return static_cast<int64_t>(blockIdx.x); }
SAMP_DEV int64_t num_blocks() { return static_cast<int64_t>(gridDim.x); }
SAMP_DEV void sync() { __syncthreads(); }
SAMP_DEV void atomic_add(uint32_t* a, uint32_t v) { atomicAdd(a, v); }
SAMP_DEV void atomic_add(float* a, float v) { atomicAdd(a, v); }
SAMP_DEV void atomic_min(uint32_t* a, uint32_t v) { atomicMin(a, v); }
SAMP_DEV float fexp(float v) { return expf(v); }
#else
// The emulation runs the threads of a block as cooperative fibers: plain read-modify-writes are atomic.
SAMP_DEV unsigned thread_id() { return dev::thread_id(); }
SAMP_DEV int64_t block_id() { return dev::block_id(); }
SAMP_DEV int64_t num_blocks() { return dev::num_blocks(); }
SAMP_DEV void sync() { dev::sync(); }
SAMP_DEV void atomic_add(uint32_t* a, uint32_t v) { *a += v; }
SAMP_DEV void atomic_add(float* a, float v) { *a += v; }
SAMP_DEV void atomic_min(uint32_t* a, uint32_t v) { *a = v < *a ? v : *a; }
SAMP_DEV float fexp(float v) { return expf(v); }
#endif
}  // namespace samp

struct SampSmem {
  uint32_t hist[256];
  float mass[256];
  float redf[kSampThreads];
  uint32_t redu[kSampThreads];
  double G;
  uint32_t prefix;
  uint32_t ties;
  uint32_t tok;
  uint32_t last_tie;
  int64_t rem;
};

template <typename T>
SAMP_DEV uint32_t samp_key(const T* lg, int64_t i, float temperature) {
  return ordered_bits(sampling_score(to_float(lg[i]), temperature));
}

// Block-wide reductions and scans over S.redu / S.redf (every thread gets the result).
SAMP_DEV uint32_t samp_block_max(uint32_t v, SampSmem& S) {
  const unsigned t = samp::thread_id();
  S.redu[t] = v;
  samp::sync();
  for (unsigned off = kSampThreads / 2; off > 0; off >>= 1) {
    if (t < off) S.redu[t] = S.redu[t + off] > S.redu[t] ? S.redu[t + off] : S.redu[t];
    samp::sync();
  }
  const uint32_t r = S.redu[0];
  samp::sync();
  return r;
}
SAMP_DEV float samp_block_sum(float v, SampSmem& S) {
  const unsigned t = samp::thread_id();
  S.redf[t] = v;
  samp::sync();
  for (unsigned off = kSampThreads / 2; off > 0; off >>= 1) {
    if (t < off) S.redf[t] += S.redf[t + off];
    samp::sync();
  }
  const float r = S.redf[0];
  samp::sync();
  return r;
}
// Inclusive scans (Hillis-Steele); after the call S.red*[t] holds thread t's inclusive value.
SAMP_DEV void samp_scan_u32(uint32_t v, SampSmem& S) {
  const unsigned t = samp::thread_id();
  S.redu[t] = v;
  samp::sync();
  for (unsigned off = 1; off < kSampThreads; off <<= 1) {
    const uint32_t add = t >= off ? S.redu[t - off] : 0u;
    samp::sync();
    S.redu[t] += add;
    samp::sync();
  }
}
SAMP_DEV void samp_scan_f32(float v, SampSmem& S) {
  const unsigned t = samp::thread_id();
  S.redf[t] = v;
  samp::sync();
  for (unsigned off = 1; off < kSampThreads; off <<= 1) {
    const float add = t >= off ? S.redf[t - off] : 0.f;
    samp::sync();
    S.redf[t] += add;
    samp::sync();
  }
}

SAMP_DEV bool samp_kept(uint32_t key, int64_t i, uint32_t floor, bool tp, uint32_t cut, int64_t last_tie) {
  if (!tp) return key >= floor;
  return key > cut || (key == cut && i <= last_tie);
}

// One row (all threads of the block): returns nothing, thread 0 writes out.
template <typename T>
SAMP_DEV void sample_row_block(const T* lg, float u, int64_t* out, const SamplingParams& p, SampSmem& S) {
  const unsigned t = samp::thread_id();
  const int64_t V = p.vocab;
  // 1. maximum
  uint32_t mk = 0;
  for (int64_t i = t; i < V; i += kSampThreads) {
    const uint32_t k = samp_key(lg, i, p.temperature);
    mk = k > mk ? k : mk;
  }
  mk = samp_block_max(mk, S);
  const float mx = sampling_key_to_float(mk);
  if (V == 0 || mx == -__builtin_huge_valf()) {
    if (t == 0) *out = 0;
    return;
  }
  // 2. top-k: the k-th largest key
  uint32_t floor = 0;
  if (sampling_top_k_on(p)) {
    uint32_t prefix = 0, mask = 0;
    if (t == 0) S.rem = p.top_k;
    for (int round = 0; round < 4; ++round) {
      const int sh = 24 - 8 * round;
      if (t < 256) S.hist[t] = 0;
      samp::sync();
      for (int64_t i = t; i < V; i += kSampThreads) {
        const uint32_t k = samp_key(lg, i, p.temperature);
        if ((k & mask) == prefix) samp::atomic_add(&S.hist[(k >> sh) & 255u], 1u);
      }
      samp::sync();
      if (t == 0) {
        int64_t rem = S.rem;
        int b = 255;
        for (; b > 0; --b) {
          if (static_cast<int64_t>(S.hist[b]) >= rem) break;
          rem -= S.hist[b];
        }
        S.rem = rem;
        S.prefix = prefix | (uint32_t(b) << sh);
      }
      samp::sync();
      prefix = S.prefix;
      mask |= 255u << sh;
    }
    floor = prefix;
  }
  // 3. top-p: the cut-off value and the last kept tie
  const bool tp = sampling_top_p_on(p);
  uint32_t cut = 0;
  int64_t last_tie = V;
  if (tp) {
    float zt = 0.f;
    for (int64_t i = t; i < V; i += kSampThreads) {
      const uint32_t k = samp_key(lg, i, p.temperature);
      if (k >= floor) zt += samp::fexp(sampling_key_to_float(k) - mx);
    }
    const double P = p.top_p * static_cast<double>(samp_block_sum(zt, S));
    uint32_t prefix = 0, mask = 0;
    if (t == 0) S.G = 0.0;
    for (int round = 0; round < 4; ++round) {
      const int sh = 24 - 8 * round;
      if (t < 256) {
        S.hist[t] = 0;
        S.mass[t] = 0.f;
      }
      samp::sync();
      for (int64_t i = t; i < V; i += kSampThreads) {
        const uint32_t k = samp_key(lg, i, p.temperature);
        if (k >= floor && (k & mask) == prefix) {
          const uint32_t b = (k >> sh) & 255u;
          samp::atomic_add(&S.hist[b], 1u);
          samp::atomic_add(&S.mass[b], samp::fexp(sampling_key_to_float(k) - mx));
        }
      }
      samp::sync();
      if (t == 0) {
        double G = S.G;
        int b = 255, low = 0;
        for (; b >= 0; --b) {
          if (S.hist[b] == 0) continue;
          low = b;
          if (G + S.mass[b] >= P) break;
          G += S.mass[b];
        }
        if (b < 0) {
          b = low;
          G -= S.mass[low];
        }
        S.G = G;
        S.ties = S.hist[b];
        S.prefix = prefix | (uint32_t(b) << sh);
      }
      samp::sync();
      prefix = S.prefix;
      mask |= 255u << sh;
    }
    cut = prefix;
    const uint32_t ties = S.ties;
    const int64_t n = sampling_ties_kept(P, S.G, samp::fexp(sampling_key_to_float(cut) - mx), ties);
    if (n < static_cast<int64_t>(ties)) {
      const int64_t seg = (V + kSampThreads - 1) / kSampThreads;
      const int64_t b0 = t * seg, b1 = b0 + seg < V ? b0 + seg : V;
      uint32_t c = 0;
      for (int64_t i = b0; i < b1; ++i) c += samp_key(lg, i, p.temperature) == cut;
      samp_scan_u32(c, S);
      const uint32_t incl = S.redu[t], excl = incl - c;
      if (excl < n && static_cast<int64_t>(incl) >= n) {
        uint32_t seen = excl;
        for (int64_t i = b0; i < b1; ++i)
          if (samp_key(lg, i, p.temperature) == cut && static_cast<int64_t>(++seen) == n) {
            S.last_tie = static_cast<uint32_t>(i);
            break;
          }
      }
      samp::sync();
      last_tie = S.last_tie;
      samp::sync();
    }
  }
  // 4. inverse CDF over contiguous segments
  const int64_t seg = (V + kSampThreads - 1) / kSampThreads;
  const int64_t b0 = t * seg, b1 = b0 + seg < V ? b0 + seg : V;
  float s = 0.f;
  uint32_t last = 0;  // last kept id + 1 (0: none)
  for (int64_t i = b0; i < b1; ++i) {
    const uint32_t k = samp_key(lg, i, p.temperature);
    if (!samp_kept(k, i, floor, tp, cut, last_tie)) continue;
    const float e = samp::fexp(sampling_key_to_float(k) - mx);
    s += e;
    if (e > 0.f) last = static_cast<uint32_t>(i) + 1u;
  }
  last = samp_block_max(last, S);
  samp_scan_f32(s, S);
  const float z = S.redf[kSampThreads - 1];
  const float excl = t == 0 ? 0.f : S.redf[t - 1];
  const float target = u * z;
  if (t == 0) S.tok = last > 0 ? last - 1 : 0u;
  samp::sync();
  if (s > 0.f && excl <= target && target < excl + s) {
    float acc = excl;
    uint32_t pick = 0xffffffffu, seg_last = 0xffffffffu;
    for (int64_t i = b0; i < b1; ++i) {
      const uint32_t k = samp_key(lg, i, p.temperature);
      if (!samp_kept(k, i, floor, tp, cut, last_tie)) continue;
      const float e = samp::fexp(sampling_key_to_float(k) - mx);
      if (!(e > 0.f)) continue;
      acc += e;
      seg_last = static_cast<uint32_t>(i);
      if (acc > target) {
        pick = seg_last;
        break;
      }
    }
    samp::atomic_min(&S.tok, pick != 0xffffffffu ? pick : seg_last);
  }
  samp::sync();
  if (t == 0) *out = static_cast<int64_t>(S.tok);
  samp::sync();
}

#if defined(__CUDACC__)
template <typename T>
__global__ void __launch_bounds__(kSampThreads, 1) sample_top_k_top_p_kernel(const T* logits, const float* uniform,
                                                                          int64_t* out, SamplingParams p) {
  __shared__ SampSmem S;
  for (int64_t r = samp::block_id(); r < p.rows; r += samp::num_blocks())
    sample_row_block<T>(logits + r * p.logits_stride, uniform[r], out + r, p, S);
}
#endif

// The body of the kernel for the emulation (one call per block).
template <typename T>
SAMP_DEV void sample_top_k_top_p_block(const T* logits, const float* uniform, int64_t* out, const SamplingParams& p,
                                       SampSmem& S) {
  for (int64_t r = samp::block_id(); r < p.rows; r += samp::num_blocks())
    sample_row_block<T>(logits + r * p.logits_stride, uniform[r], out + r, p, S);
}

}  // namespace cuda
}  // namespace detox
