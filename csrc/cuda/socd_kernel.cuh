// SoCD CUDA kernels (header-only, free of torch headers). Semantics: the kernel contract in
// detox_kernels/reference/socd.py, mirrored from the CPU kernel csrc/cpu/socd_cpu.h.
//
// Two paths, the same selection rule and arithmetic:
//
// A. socd_kernel: one CTA per row (grid-stride over rows), any sm_80+ GPU, any width. Passes:
//   1. online softmax statistics of x and y (max, sum of exp, and E[x - y] / E[y - x] for the
//      KL divergences; one branch-free exp2 per element and input) and the validity flags
//      (NaN / +inf / all -inf);
//   2. the candidates key = y - x > c (c = lse(y) - lse(x)): count npos and the first radix
//      histogram (11 bits) of ordered_bits(key), plus the jsd/tvd/l2 divergence sum;
//      alpha and k are computed on the device, m = min(k, npos);
//   3. radix select of the m-th largest key: two more rounds of 11 and 10 bits restricted to the
//      candidates and the prefix found so far. Each global round also gathers the
//      (ordered key, id) pairs matching its prefix into a shared-memory list when they fit
//      (pass 2 opportunistically gathers all candidates until the list overflows), so that the
//      remaining rounds run on shared memory only;
//   4. ties at the threshold T: the r = m - G candidates with key bits == T and the lowest ids,
//      found either by a radix select on ~id over the shared list or by a block-wide scan over
//      the row in index order (chunk by chunk, early exit), giving the cut-off id J;
//   5. write: out = x - alpha*|y| (or alpha*y) on the selected set {cand, ob > T or (ob == T and
//      id <= J)}, out = x elsewhere (nothing written for unchanged elements when out == x);
//      columns >= vocab are copied.
//   Early exits: invalid rows and m == 0 skip 2-4, m == npos skips 3-4, a radix bucket that is
//   taken whole ends the select.
//
// B. socd_cluster_kernel (sm_90+): a cluster of 8 or 16 CTAs per row, each holding its
//   columns of x and y in shared memory (one global read and one write of the row); the same
//   passes run on shared memory, and the per-CTA partials (statistics, histograms, sums, tie
//   counts) are merged through distributed shared memory. See "Cluster path" below.
//
// The device logic is written against a handful of primitives (namespace detox::cuda::dev) so
// that it can also be compiled on the host with DETOX_SOCD_EMULATION, where emu/socd_emu.h
// provides them with one fiber per CUDA thread (tests: emu/run_emu_test.sh).
#pragma once

#include <math.h>
#include <stdint.h>

#include "../common/socd_params.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define SOCD_DEV __device__ __forceinline__
#elif defined(DETOX_SOCD_EMULATION)
#define SOCD_DEV inline
#else
#error "socd_kernel.cuh is compiled by nvcc (or by the CPU emulation with DETOX_SOCD_EMULATION)"
#endif

// Path counters for the CPU emulation's coverage report; nothing in CUDA builds.
#ifndef SOCD_TRACE
#define SOCD_TRACE(what)
#endif

namespace detox {
namespace cuda {

// 16 bytes of raw element storage (4 fp32 or 8 fp16/bf16).
struct alignas(16) Raw16 {
  uint32_t w[4];
};

#if defined(__CUDACC__)
namespace dev {
constexpr unsigned kFull = 0xffffffffu;
SOCD_DEV unsigned thread_id() { return threadIdx.x; }
SOCD_DEV int64_t block_id() { return static_cast<int64_t>(blockIdx.x); }
SOCD_DEV int64_t num_blocks() { return static_cast<int64_t>(gridDim.x); }
SOCD_DEV void sync() { __syncthreads(); }
SOCD_DEV float shfl_xor(float v, int m) { return __shfl_xor_sync(kFull, v, m); }
SOCD_DEV uint32_t shfl_xor(uint32_t v, int m) { return __shfl_xor_sync(kFull, v, m); }
SOCD_DEV uint32_t shfl_up(uint32_t v, int d) { return __shfl_up_sync(kFull, v, d); }
SOCD_DEV uint32_t shfl(uint32_t v, int src) { return __shfl_sync(kFull, v, src); }
SOCD_DEV uint32_t atomic_add(uint32_t* a, uint32_t v) { return atomicAdd(a, v); }
SOCD_DEV uint32_t load_volatile(const uint32_t* a) { return *reinterpret_cast<const volatile uint32_t*>(a); }
SOCD_DEV int popc(uint32_t v) { return __popc(v); }
SOCD_DEV float fexp(float v) { return expf(v); }
// 2^v: MUFU.EX2 plus the denormal scaling (no range reduction, unlike expf); the kernels call it
// with arguments pre-scaled by log2(e) (fexp2(v * kLog2e) = e^v to about 2 ulp).
SOCD_DEV float fexp2(float v) { return exp2f(v); }
SOCD_DEV unsigned cluster_size();
SOCD_DEV float flog(float v) { return logf(v); }
SOCD_DEV float fsqrt(float v) { return sqrtf(v); }
// No FMA contraction in the output formula: x - round(alpha * s), as the CPU kernel computes it.
SOCD_DEV float mul_rn(float a, float b) { return __fmul_rn(a, b); }
SOCD_DEV float sub_rn(float a, float b) { return __fsub_rn(a, b); }
SOCD_DEV float u2f(uint32_t u) { return __uint_as_float(u); }
SOCD_DEV uint32_t f2u(float f) { return __float_as_uint(f); }
SOCD_DEV Raw16 load16(const void* p) {
  const uint4 v = *reinterpret_cast<const uint4*>(p);
  Raw16 r;
  r.w[0] = v.x;
  r.w[1] = v.y;
  r.w[2] = v.z;
  r.w[3] = v.w;
  return r;
}
SOCD_DEV void store16(void* p, const Raw16& r) {
  *reinterpret_cast<uint4*>(p) = make_uint4(r.w[0], r.w[1], r.w[2], r.w[3]);
}
// fp16/bf16 <-> fp32 in hardware (IEEE round to nearest even, like from_float in socd_params.h).
SOCD_DEV float half_bits_to_float(uint32_t b) { return __half2float(__ushort_as_half(static_cast<unsigned short>(b))); }
SOCD_DEV uint32_t float_to_half_bits(float f) { return __half_as_ushort(__float2half_rn(f)); }
SOCD_DEV float bf16_bits_to_float(uint32_t b) { return __uint_as_float(b << 16); }
SOCD_DEV uint32_t float_to_bf16_bits(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }

// Thread-block clusters (sm_90+; the cluster kernel is never launched below, where these trap).
SOCD_DEV void cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
#else
  __trap();
#endif
}
SOCD_DEV unsigned cluster_size() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(r));
  return r;
#else
  __trap();
  return 1;
#endif
}
SOCD_DEV unsigned cluster_rank() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
#else
  __trap();
  return 0;
#endif
}
SOCD_DEV int64_t cluster_id() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  unsigned r;
  asm volatile("mov.u32 %0, %%clusterid.x;" : "=r"(r));
  return static_cast<int64_t>(r);
#else
  __trap();
  return 0;
#endif
}
SOCD_DEV int64_t num_clusters() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  unsigned r;
  asm volatile("mov.u32 %0, %%nclusterid.x;" : "=r"(r));
  return static_cast<int64_t>(r);
#else
  __trap();
  return 1;
#endif
}
// Generic address of the object at `p` (this CTA's shared memory) in CTA `rank` of the cluster.
template <class P>
SOCD_DEV P* map_shared(P* p, unsigned rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint64_t r;
  asm volatile("mapa.u64 %0, %1, %2;" : "=l"(r) : "l"(reinterpret_cast<uint64_t>(p)), "r"(rank));
  return reinterpret_cast<P*>(r);
#else
  __trap();
  return p;
#endif
}
}  // namespace dev
#endif

namespace socd {

constexpr int kMaxBins = 2048;  // radix digits of at most 11 bits
// Three rounds of 11, 11 and 10 bits cover the 32-bit ordered key (and the 32-bit ~id of the tie
// select): one global round fewer than 11 + 7 + 7 + 7, for the same 2048-bin histogram.
constexpr int kRounds = 3;
SOCD_DEV int digit_bits(int r) { return r == 2 ? 10 : 11; }
SOCD_DEV int digit_shift(int r) { return r == 0 ? 21 : r == 1 ? 10 : 0; }  // 21, 10, 0
constexpr float kLog2e = 1.4426950408889634f;
constexpr uint32_t kAllIds = 0xffffffffu;

// Element storage traits: raw bits (zero-extended to 32) <-> float.
template <typename T>
struct Storage;
template <>
struct Storage<float> {
  static SOCD_DEV float to_f(uint32_t b) { return dev::u2f(b); }
  static SOCD_DEV uint32_t from_f(float f) { return dev::f2u(f); }
  static SOCD_DEV uint32_t load(const float* p) { return dev::f2u(*p); }
  static SOCD_DEV void store(float* p, uint32_t b) { *p = dev::u2f(b); }
};
template <>
struct Storage<half_t> {
  static SOCD_DEV float to_f(uint32_t b) { return dev::half_bits_to_float(b); }
  static SOCD_DEV uint32_t from_f(float f) { return dev::float_to_half_bits(f); }
  static SOCD_DEV uint32_t load(const half_t* p) { return p->bits; }
  static SOCD_DEV void store(half_t* p, uint32_t b) { p->bits = static_cast<uint16_t>(b); }
};
template <>
struct Storage<bfloat16_t> {
  static SOCD_DEV float to_f(uint32_t b) { return dev::bf16_bits_to_float(b); }
  static SOCD_DEV uint32_t from_f(float f) { return dev::float_to_bf16_bits(f); }
  static SOCD_DEV uint32_t load(const bfloat16_t* p) { return p->bits; }
  static SOCD_DEV void store(bfloat16_t* p, uint32_t b) { p->bits = static_cast<uint16_t>(b); }
};

// The raw elements of one thread slot, packed as in memory (VE elements, 16 bytes when VE > 1).
template <typename T, int VE>
struct Slot {
  static constexpr int kWords = VE * sizeof(T) >= 4 ? static_cast<int>(VE * sizeof(T) / 4) : 1;
  uint32_t w[kWords];
  SOCD_DEV uint32_t get(int e) const {
    if constexpr (sizeof(T) == 4) {
      return w[e];
    } else {
      return (w[e >> 1] >> ((e & 1) * 16)) & 0xffffu;
    }
  }
  SOCD_DEV void set(int e, uint32_t b) {
    if constexpr (sizeof(T) == 4) {
      w[e] = b;
    } else {
      const int sh = (e & 1) * 16;
      w[e >> 1] = (w[e >> 1] & ~(0xffffu << sh)) | ((b & 0xffffu) << sh);
    }
  }
};

SOCD_DEV float f_inf() { return __builtin_huge_valf(); }
SOCD_DEV bool is_finite(float f) { return (dev::f2u(f) & 0x7f800000u) != 0x7f800000u; }

// Online softmax statistics of one distribution: max m, s = sum exp(v - m) and
// t = sum exp(v - m) * diff (diff = v - other logit, for the KL expectations).
struct Online {
  float m, s, t;
};
// One exponential per element and no branch: e = 2^((min(m, v) - max(m, v)) log2 e) is the
// factor of whichever of the running sum and the new term is the smaller one (0 when o.m ==
// -inf). v is finite or NaN (a NaN row is invalid whatever the sums hold).
SOCD_DEV void online_add(Online& o, float v, float diff) {
  const bool up = v > o.m;
  const float hi = up ? v : o.m;
  const float lo = up ? o.m : v;
  const float e = dev::fexp2((lo - hi) * kLog2e);
  o.s = up ? fmaf(o.s, e, 1.f) : o.s + e;
  o.t = up ? fmaf(o.t, e, diff) : fmaf(e, diff, o.t);
  o.m = hi;
}
SOCD_DEV Online online_merge(const Online& a, const Online& b) {
  const float M = fmaxf(a.m, b.m);
  if (M == -f_inf()) return a;  // both empty (s = t = 0)
  const float fa = a.m == -f_inf() ? 0.f : dev::fexp2((a.m - M) * kLog2e);
  const float fb = b.m == -f_inf() ? 0.f : dev::fexp2((b.m - M) * kLog2e);
  return Online{M, a.s * fa + b.s * fb, a.t * fa + b.t * fb};
}

// Shared memory of one CTA. CAP: capacity of the (ordered key, id) list.
template <int BLOCK, int CAP>
struct Smem {
  static constexpr int kWarps = BLOCK / 32;
  uint32_t hist[kMaxBins];
  uint32_t list_ob[CAP];
  uint32_t list_idx[CAP];
  float red_f[kWarps][6];
  uint32_t red_u[kWarps];
  uint32_t scan[kWarps];
  uint32_t list_count;
  uint32_t pick_digit, pick_above, pick_count;
  uint32_t tie_id;
};

struct Pick {
  uint32_t digit, above, count, total, need;
};

// One row. VE: elements per thread slot (16 bytes worth when the row is 16-byte aligned, else 1).
template <typename T, int BLOCK, int CAP, int VE>
struct Row {
  static_assert(BLOCK % 32 == 0 && BLOCK >= 64 && BLOCK <= 1024 && (BLOCK & (BLOCK - 1)) == 0,
                "BLOCK must be a power of two in [64, 1024]");
  static_assert(VE == 1 || VE * sizeof(T) == 16, "VE is 1 or 16 bytes of elements");
  static_assert(CAP >= BLOCK && CAP % BLOCK == 0, "CAP must be a multiple of BLOCK");
  static constexpr int kWarps = BLOCK / 32;
  static constexpr int U = 2;  // slots in flight per thread per loop iteration

  Smem<BLOCK, CAP>& s;
  const T* x;
  const T* y;
  T* out;
  int64_t V;  // vocab (< 2^31)
  int64_t W;  // cols
  unsigned tid, lane, warp;

  // ---------------------------------------------------------------- block primitives
  // Each starts with a barrier, so that the scratch it writes is free whatever came before.

  // Sum of one float over the block (every thread gets the same value).
  SOCD_DEV float block_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += dev::shfl_xor(v, o);
    dev::sync();
    if (lane == 0) s.red_f[warp][0] = v;
    dev::sync();
    float w = lane < static_cast<unsigned>(kWarps) ? s.red_f[lane][0] : 0.f;
    for (int o = 16; o > 0; o >>= 1) w += dev::shfl_xor(w, o);
    return w;
  }

  // Merge of the softmax statistics and OR of the flags over the block.
  SOCD_DEV void block_stats(Online& ox, Online& oy, uint32_t& flags) {
    for (int o = 16; o > 0; o >>= 1) {
      const Online px{dev::shfl_xor(ox.m, o), dev::shfl_xor(ox.s, o), dev::shfl_xor(ox.t, o)};
      const Online py{dev::shfl_xor(oy.m, o), dev::shfl_xor(oy.s, o), dev::shfl_xor(oy.t, o)};
      // Same merge order on both lanes of a pair (lower lane first) so the result is uniform.
      ox = (lane & o) ? online_merge(px, ox) : online_merge(ox, px);
      oy = (lane & o) ? online_merge(py, oy) : online_merge(oy, py);
      flags |= dev::shfl_xor(flags, o);
    }
    dev::sync();
    if (lane == 0) {
      s.red_f[warp][0] = ox.m;
      s.red_f[warp][1] = ox.s;
      s.red_f[warp][2] = ox.t;
      s.red_f[warp][3] = oy.m;
      s.red_f[warp][4] = oy.s;
      s.red_f[warp][5] = oy.t;
      s.red_u[warp] = flags;
    }
    dev::sync();
    const Online empty{-f_inf(), 0.f, 0.f};
    Online wx = empty, wy = empty;
    uint32_t wf = 0;
    if (lane < static_cast<unsigned>(kWarps)) {
      wx = Online{s.red_f[lane][0], s.red_f[lane][1], s.red_f[lane][2]};
      wy = Online{s.red_f[lane][3], s.red_f[lane][4], s.red_f[lane][5]};
      wf = s.red_u[lane];
    }
    for (int o = 16; o > 0; o >>= 1) {
      const Online px{dev::shfl_xor(wx.m, o), dev::shfl_xor(wx.s, o), dev::shfl_xor(wx.t, o)};
      const Online py{dev::shfl_xor(wy.m, o), dev::shfl_xor(wy.s, o), dev::shfl_xor(wy.t, o)};
      wx = (lane & o) ? online_merge(px, wx) : online_merge(wx, px);
      wy = (lane & o) ? online_merge(py, wy) : online_merge(wy, py);
      wf |= dev::shfl_xor(wf, o);
    }
    // Every warp reduced the same values in the same order: all threads agree. Broadcast
    // lane 0's result anyway, so that uniformity does not rest on the lanes' merge orders.
    ox = Online{dev::u2f(dev::shfl(dev::f2u(wx.m), 0)), dev::u2f(dev::shfl(dev::f2u(wx.s), 0)),
                dev::u2f(dev::shfl(dev::f2u(wx.t), 0))};
    oy = Online{dev::u2f(dev::shfl(dev::f2u(wy.m), 0)), dev::u2f(dev::shfl(dev::f2u(wy.s), 0)),
                dev::u2f(dev::shfl(dev::f2u(wy.t), 0))};
    flags = dev::shfl(wf, 0);
  }

  // Exclusive prefix sum over the threads in thread order; total gets the block total.
  SOCD_DEV uint32_t block_excl_scan(uint32_t v, uint32_t& total) {
    uint32_t inc = v;
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t t = dev::shfl_up(inc, o);
      if (lane >= static_cast<unsigned>(o)) inc += t;
    }
    dev::sync();
    if (lane == 31) s.scan[warp] = inc;
    dev::sync();
    uint32_t w = lane < static_cast<unsigned>(kWarps) ? s.scan[lane] : 0u;
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t t = dev::shfl_up(w, o);
      if (lane >= static_cast<unsigned>(o)) w += t;
    }
    total = dev::shfl(w, 31);
    const uint32_t before = dev::shfl(w, warp > 0 ? static_cast<int>(warp) - 1 : 0);
    return (warp > 0 ? before : 0u) + inc - v;
  }

  // Radix digit choice on s.hist[0, nbins): the digit d with above(d) < need <= above(d) +
  // hist[d], above(d) = sum of the bins above d. need = need_of(total) where total is the sum
  // of all bins. Must be called by the whole block; the result is uniform.
  template <class NeedOf>
  SOCD_DEV Pick pick_digit(int nbins, NeedOf need_of) {
    const int bpt = nbins >= BLOCK ? nbins / BLOCK : 1;  // bins per thread, from the top down
    const int hi = nbins - 1 - static_cast<int>(tid) * bpt;
    dev::sync();  // the histogram's atomics are complete
    uint32_t local = 0;
    if (hi >= 0) {
      for (int i = 0; i < bpt; ++i) local += s.hist[hi - i];
    }
    uint32_t total;
    const uint32_t excl = block_excl_scan(local, total);
    const uint32_t need = need_of(total);
    if (local > 0 && excl < need && need <= excl + local) {
      uint32_t acc = excl;
      for (int i = 0; i < bpt; ++i) {
        const uint32_t h = s.hist[hi - i];
        if (acc + h >= need) {
          s.pick_digit = static_cast<uint32_t>(hi - i);
          s.pick_above = acc;
          s.pick_count = h;
          break;
        }
        acc += h;
      }
    }
    dev::sync();
    Pick p;
    p.total = total;
    p.need = need;
    if (need > 0 && need <= total) {
      p.digit = s.pick_digit;
      p.above = s.pick_above;
      p.count = s.pick_count;
    } else {
      p.digit = 0;
      p.above = 0;
      p.count = 0;
    }
    return p;
  }

  SOCD_DEV void clear_hist() {
    for (int i = static_cast<int>(tid); i < kMaxBins; i += BLOCK) s.hist[i] = 0;
  }

  // ---------------------------------------------------------------- row loops
  using SlotT = Slot<T, VE>;

  // Loads slot `slot` (elements slot*VE ... of a row of length n); returns how many elements are
  // in range (0..VE); the others read as 0.
  SOCD_DEV int load_slot(const T* p, int64_t slot, int64_t n, SlotT& v) const {
    const int64_t j0 = slot * VE;
    const int64_t left = n - j0;
    if (left <= 0) {
#pragma unroll
      for (int i = 0; i < SlotT::kWords; ++i) v.w[i] = 0;
      return 0;
    }
    if constexpr (VE > 1) {
      if (left >= VE) {
        const Raw16 r = dev::load16(p + j0);
#pragma unroll
        for (int i = 0; i < 4; ++i) v.w[i] = r.w[i];
        return VE;
      }
#pragma unroll
      for (int i = 0; i < SlotT::kWords; ++i) v.w[i] = 0;
#pragma unroll
      for (int e = 0; e < VE; ++e) {
        if (e < left) v.set(e, Storage<T>::load(p + j0 + e));
      }
      return static_cast<int>(left);
    } else {
      v.w[0] = Storage<T>::load(p + j0);
      return 1;
    }
  }

  // Calls f(j0, cnt, xb, yb) for every slot of [0, n): the thread's slots are tid, tid + BLOCK,
  // ... (U of them per iteration, loaded before any is processed). The iteration count is the
  // same for every thread, so f may use warp-synchronous primitives (cnt is 0 past the end).
  template <bool LOAD_Y, class F>
  SOCD_DEV void for_slots(int64_t n, F&& f) {
    const int64_t nslots = (n + VE - 1) / VE;
    for (int64_t base = 0; base < nslots; base += static_cast<int64_t>(BLOCK) * U) {
      SlotT xb[U], yb[U];
      int cnt[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t slot = base + u * BLOCK + tid;
        cnt[u] = load_slot(x, slot, n, xb[u]);
        if (LOAD_Y) load_slot(y, slot, n, yb[u]);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) f((base + u * BLOCK + tid) * VE, cnt[u], xb[u], yb[u]);
    }
  }

  // Warp-aggregated append of this thread's wanted (ob, id) pairs to the shared list; slots past
  // CAP are counted but not stored. Called by all lanes of the warp.
  SOCD_DEV void list_append(uint32_t want, const uint32_t (&ob)[VE], int64_t j0) {
    const uint32_t n = static_cast<uint32_t>(dev::popc(want));
    uint32_t inc = n;
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t t = dev::shfl_up(inc, o);
      if (lane >= static_cast<unsigned>(o)) inc += t;
    }
    const uint32_t tot = dev::shfl(inc, 31);
    if (tot == 0) return;  // warp-uniform
    uint32_t base = 0;
    if (lane == 0) base = dev::atomic_add(&s.list_count, tot);
    base = dev::shfl(base, 0);
    uint32_t at = base + inc - n;
#pragma unroll
    for (int e = 0; e < VE; ++e) {
      if (want & (1u << e)) {
        if (at < static_cast<uint32_t>(CAP)) {
          s.list_ob[at] = ob[e];
          s.list_idx[at] = static_cast<uint32_t>(j0 + e);
        }
        ++at;
      }
    }
  }

  // ---------------------------------------------------------------- the row
  SOCD_DEV void run(const SocdParams& p, float* alpha_out, float* div_out, int32_t* k_out, bool inplace) {
    const float ninf = -f_inf();
    const int div = p.divergence;
    const bool kl = div == int(Divergence::FKL) || div == int(Divergence::RKL) || div == int(Divergence::SKL);

    // ---- pass 1: online softmax statistics and validity
    Online ox{ninf, 0.f, 0.f}, oy{ninf, 0.f, 0.f};
    uint32_t flags = 0;  // 1: NaN or +inf, 2: p > 0 = q somewhere, 4: q > 0 = p somewhere
    for_slots<true>(V, [&](int64_t, int cnt, const SlotT& xb, const SlotT& yb) {
#pragma unroll
      for (int e = 0; e < VE; ++e) {
        if (e < cnt) {
          const float a = Storage<T>::to_f(xb.get(e));
          const float b = Storage<T>::to_f(yb.get(e));
          const bool af = a != ninf, bf = b != ninf;
          flags |= ((a != a) | (b != b) | (a == f_inf()) | (b == f_inf())) ? 1u : 0u;
          flags |= (af && !bf) ? 2u : 0u;
          flags |= (bf && !af) ? 4u : 0u;
          const bool both = af && bf;
          if (af) online_add(ox, a, both ? a - b : 0.f);
          if (bf) online_add(oy, b, both ? b - a : 0.f);
        }
      }
    });
    block_stats(ox, oy, flags);

    const bool valid = (flags & 1u) == 0 && ox.m != ninf && oy.m != ninf && V > 0;
    if (tid == 0 && !valid) SOCD_TRACE("row invalid");
    float d = dev::u2f(0x7fc00000u);  // NaN
    float alpha = 0.f;
    int64_t k = 0;
    uint32_t m = 0;        // number of tokens changed
    uint32_t thr = 0;      // threshold (ordered key bits); selected: cand && (ob > thr || (ob == thr && id <= J))
    uint32_t J = kAllIds;  // tie cut-off id
    float c = 0.f;

    if (valid) {
      const float lse_x = ox.m + dev::flog(ox.s);
      const float lse_y = oy.m + dev::flog(oy.s);
      c = lse_y - lse_x;
      const float lx2 = lse_x * kLog2e, ly2 = lse_y * kLog2e;
      if (kl) {
        const float fkl = (flags & 2u) ? f_inf() : ox.t / ox.s - lse_x + lse_y;
        const float rkl = (flags & 4u) ? f_inf() : oy.t / oy.s - lse_y + lse_x;
        d = div == int(Divergence::FKL) ? fkl : div == int(Divergence::RKL) ? rkl : 0.5f * (fkl + rkl);
        if (is_finite(d)) {
          alpha = socd_alpha(d);
          k = socd_k(alpha, p);
        }
      }
      // ---- pass 2 (radix round 0): candidates, npos, first histogram; jsd/tvd/l2 sum.
      // Skipped for a KL row whose d is not finite or whose k is 0 (then m = 0).
      if (tid == 0 && kl && k == 0) SOCD_TRACE("pass 2 skipped (KL, k == 0 or d not finite)");
      if (!kl || k > 0) {
        clear_hist();
        if (tid == 0) s.list_count = 0;
        dev::sync();
        const uint32_t dmask0 = (1u << digit_bits(0)) - 1u;
        const int shift0 = digit_shift(0);
        float acc = 0.f;
        for_slots<true>(V, [&](int64_t j0, int cnt, const SlotT& xb, const SlotT& yb) {
          uint32_t want = 0;
          uint32_t ob[VE];
#pragma unroll
          for (int e = 0; e < VE; ++e) {
            ob[e] = 0;
            if (e < cnt) {
              const float a = Storage<T>::to_f(xb.get(e));
              const float b = Storage<T>::to_f(yb.get(e));
              const float key = b - a;
              if (key > c) {
                ob[e] = ordered_bits(key);
                dev::atomic_add(&s.hist[(ob[e] >> shift0) & dmask0], 1u);
                want |= 1u << e;
              }
              if (!kl) {
                const float lp = a - lse_x, lq = b - lse_y;
                // one FFMA + EX2 each (lse pre-scaled by log2 e); 0 for -inf
                const float pj = dev::fexp2(fmaf(a, kLog2e, -lx2)), qj = dev::fexp2(fmaf(b, kLog2e, -ly2));
                if (div == int(Divergence::TVD)) {
                  acc += fabsf(pj - qj);
                } else if (div == int(Divergence::L2)) {
                  acc += (pj - qj) * (pj - qj);
                } else {  // JSD
                  const float mj = 0.5f * (pj + qj);
                  if (mj > 0.f) {
                    const float lm = dev::flog(mj);
                    if (pj > 0.f) acc += pj * (lp - lm);
                    if (qj > 0.f) acc += qj * (lq - lm);
                  }
                }
              }
            }
          }
          // Opportunistic gathering of all candidates, until the list overflows (the check is
          // made warp-uniform by lane 0's read).
          const uint32_t fill = dev::shfl(lane == 0 ? dev::load_volatile(&s.list_count) : 0u, 0);
          if (fill <= static_cast<uint32_t>(CAP)) list_append(want, ob, j0);
        });
        if (!kl) {
          const float sum = block_sum(acc);
          d = div == int(Divergence::L2) ? dev::fsqrt(sum) : 0.5f * sum;
          if (is_finite(d)) {
            alpha = socd_alpha(d);
            k = socd_k(alpha, p);
          }
        }
        const bool sel_ok = is_finite(d) && k > 0;
        const Pick p0 = pick_digit(1 << digit_bits(0), [&](uint32_t npos) -> uint32_t {
          if (!sel_ok) return 0u;
          return k < static_cast<int64_t>(npos) ? static_cast<uint32_t>(k) : npos;
        });
        m = p0.need;
        const uint32_t npos = p0.total;
        if (tid == 0) {
          if (m == 0) SOCD_TRACE("select: m == 0 after pass 2");
          else if (m == npos) SOCD_TRACE("select: m == npos");
          else SOCD_TRACE("select: radix");
        }
        uint32_t list_n = s.list_count;  // stable: written before the barriers of pick_digit
        bool list_ok = list_n <= static_cast<uint32_t>(CAP);
        if (tid == 0 && m > 0 && m < npos && list_ok) SOCD_TRACE("list: all candidates gathered");

        if (m > 0 && m < npos) {
          // ---- radix select of the m-th largest candidate key
          uint32_t need = m - p0.above;
          uint32_t pref = p0.digit << shift0;
          uint32_t mask = dmask0 << shift0;
          uint32_t H = p0.count;  // candidates matching the prefix
          bool done = H == need;
          for (int r = 1; r < kRounds && !done; ++r) {
            const int shift = digit_shift(r);
            const uint32_t dmask = (1u << digit_bits(r)) - 1u;
            dev::sync();  // the previous pick's readers of s.hist are done
            clear_hist();
            const bool collect = !list_ok && H <= static_cast<uint32_t>(CAP);
            if (collect && tid == 0) s.list_count = 0;
            dev::sync();
            if (tid == 0) {
              if (list_ok) SOCD_TRACE("round: shared list");
              else if (collect) SOCD_TRACE("round: global + gather");
              else SOCD_TRACE("round: global");
            }
            if (list_ok) {
              for (uint32_t i = tid; i < list_n; i += BLOCK) {
                const uint32_t ob = s.list_ob[i];
                if ((ob & mask) == pref) dev::atomic_add(&s.hist[(ob >> shift) & dmask], 1u);
              }
            } else {
              for_slots<true>(V, [&](int64_t j0, int cnt, const SlotT& xb, const SlotT& yb) {
                uint32_t want = 0;
                uint32_t ob[VE];
#pragma unroll
                for (int e = 0; e < VE; ++e) {
                  ob[e] = 0;
                  if (e < cnt) {
                    const float key = Storage<T>::to_f(yb.get(e)) - Storage<T>::to_f(xb.get(e));
                    if (key > c) {
                      ob[e] = ordered_bits(key);
                      if ((ob[e] & mask) == pref) {
                        dev::atomic_add(&s.hist[(ob[e] >> shift) & dmask], 1u);
                        want |= 1u << e;
                      }
                    }
                  }
                }
                if (collect) list_append(want, ob, j0);
              });
            }
            const Pick pr = pick_digit(1 << digit_bits(r), [&](uint32_t) { return need; });
            if (collect) {
              list_n = s.list_count;  // == H <= CAP
              list_ok = true;
            }
            need -= pr.above;
            pref |= pr.digit << shift;
            mask |= dmask << shift;
            H = pr.count;
            done = H == need;
          }
          if (tid == 0 && done) SOCD_TRACE("select: a bucket taken whole");
          thr = pref;  // when done early, the low bits are 0 and every key with this prefix is taken
          if (!done) {
            // ---- ties: `need` (< H) of the H candidates with ob == thr, the lowest ids first
            if (tid == 0) SOCD_TRACE(list_ok ? "ties: shared list" : "ties: global scan");
            if (list_ok) {
              // radix select of the need-th largest ~id among the list's ties
              uint32_t ipref = 0, imask = 0;
              bool idone = false;
              for (int r = 0; r < kRounds && !idone; ++r) {
                const int shift = digit_shift(r);
                const uint32_t dmask = (1u << digit_bits(r)) - 1u;
                dev::sync();
                clear_hist();
                dev::sync();
                for (uint32_t i = tid; i < list_n; i += BLOCK) {
                  if (s.list_ob[i] == thr) {
                    const uint32_t v = ~s.list_idx[i];
                    if ((v & imask) == ipref) dev::atomic_add(&s.hist[(v >> shift) & dmask], 1u);
                  }
                }
                const Pick pr = pick_digit(1 << digit_bits(r), [&](uint32_t) { return need; });
                need -= pr.above;
                ipref |= pr.digit << shift;
                imask |= dmask << shift;
                idone = pr.count == need;  // ids are distinct: true after the last round
              }
              J = ~ipref;  // ties with ~id >= ipref, i.e. id <= ~ipref
            } else {
              J = tie_scan(thr, c, need);
            }
          }
        } else if (m > 0) {
          thr = 0;  // m == npos: every candidate
          J = kAllIds;
        }
      }
    }

    if (tid == 0) {
      *alpha_out = alpha;
      *div_out = d;
      *k_out = static_cast<int32_t>(m);
    }

    // ---- write pass
    if (m > 0) {
      const bool signed_sub = p.signed_sub;
      for_slots<true>(W, [&](int64_t j0, int cnt, SlotT& xb, const SlotT& yb) {
        uint32_t changed = 0;
#pragma unroll
        for (int e = 0; e < VE; ++e) {
          const int64_t j = j0 + e;
          if (e < cnt && j < V) {
            const float a = Storage<T>::to_f(xb.get(e));
            const float b = Storage<T>::to_f(yb.get(e));
            const float key = b - a;
            if (key > c) {
              const uint32_t ob = ordered_bits(key);
              if (ob > thr || (ob == thr && static_cast<uint32_t>(j) <= J)) {
                const float sub = signed_sub ? b : fabsf(b);
                xb.set(e, Storage<T>::from_f(dev::sub_rn(a, dev::mul_rn(alpha, sub))));
                changed |= 1u << e;
              }
            }
          }
        }
        if (cnt > 0 && (!inplace || changed)) store_slot(j0, cnt, xb, inplace ? changed : 0xffffffffu);
      });
    } else if (!inplace) {
      if (tid == 0) SOCD_TRACE("write: copy only");
      for_slots<false>(W, [&](int64_t j0, int cnt, SlotT& xb, const SlotT&) {
        if (cnt > 0) store_slot(j0, cnt, xb, 0xffffffffu);
      });
    }
  }

  // Stores the slot's elements (those in `which` for a partial slot; a full slot is stored whole,
  // its unchanged elements with their original bits).
  SOCD_DEV void store_slot(int64_t j0, int cnt, const SlotT& v, uint32_t which) {
    if constexpr (VE > 1) {
      if (cnt == VE) {
        Raw16 r;
#pragma unroll
        for (int i = 0; i < 4; ++i) r.w[i] = v.w[i];
        dev::store16(out + j0, r);
        return;
      }
    }
#pragma unroll
    for (int e = 0; e < VE; ++e) {
      if (e < cnt && (which & (1u << e))) Storage<T>::store(out + j0 + e, v.get(e));
    }
  }

  // Id of the need-th candidate (1-based, in index order) whose ordered key is thr: a block-wide
  // scan over the row, chunk by chunk, stopping at the chunk that contains it.
  SOCD_DEV uint32_t tie_scan(uint32_t thr, float c, uint32_t need) {
    const int64_t nslots = (V + VE - 1) / VE;
    uint32_t seen = 0;  // ties in the chunks before this one (uniform)
    for (int64_t base = 0; base < nslots; base += BLOCK) {
      const int64_t slot = base + tid;
      SlotT xb, yb;
      const int cnt = load_slot(x, slot, V, xb);
      load_slot(y, slot, V, yb);
      uint32_t ties = 0;
#pragma unroll
      for (int e = 0; e < VE; ++e) {
        if (e < cnt) {
          const float key = Storage<T>::to_f(yb.get(e)) - Storage<T>::to_f(xb.get(e));
          if (key > c && ordered_bits(key) == thr) ties |= 1u << e;
        }
      }
      const uint32_t n = static_cast<uint32_t>(dev::popc(ties));
      uint32_t total;
      const uint32_t excl = seen + block_excl_scan(n, total);
      if (n > 0 && excl < need && need <= excl + n) {
        uint32_t left = need - excl;  // 1-based rank among this thread's ties
#pragma unroll
        for (int e = 0; e < VE; ++e) {
          if (ties & (1u << e)) {
            if (--left == 0) s.tie_id = static_cast<uint32_t>(slot * VE + e);
          }
        }
      }
      seen += total;
      if (seen >= need) break;  // uniform
    }
    dev::sync();
    return s.tie_id;
  }
};

// All rows handled by this CTA (grid-stride).
template <typename T, int BLOCK, int CAP, int VE>
SOCD_DEV void socd_rows(const T* x, const T* y, T* out, const SocdParams& p, bool inplace, float* alpha,
                        float* div, int32_t* k, Smem<BLOCK, CAP>& s) {
  const unsigned tid = dev::thread_id();
  for (int64_t row = dev::block_id(); row < p.rows; row += dev::num_blocks()) {
    dev::sync();  // the previous row's shared memory readers are done
    Row<T, BLOCK, CAP, VE> r{s,
                             x + row * p.x_stride,
                             y + row * p.y_stride,
                             out + row * p.out_stride,
                             p.vocab,
                             p.cols,
                             tid,
                             tid & 31u,
                             tid >> 5};
    r.run(p, alpha + row, div + row, k + row, inplace);
  }
}

// ================================================================================================
// Cluster path (sm_90+): one thread-block cluster of kClusterSize CTAs per row. CTA `rank` holds
// columns [rank*chunk, (rank+1)*chunk) of x and y in shared memory, so the row is read from global
// memory once and written once; every pass after the load runs on shared memory. The per-CTA
// partial results (softmax statistics, histograms, divergence sums, tie counts) are merged through
// distributed shared memory, every CTA merging all ranks in rank order (so all CTAs agree bit for
// bit without a broadcast). Same selection rule as the single-CTA path.
// Cluster sizes: 8 (portable) by default, 16 (non-portable, sm_90) at small batch where one row
// on more SMs shortens the step; the kernel reads the size at run time (%cluster_nctarank).
constexpr int kClusterSize = 8;
constexpr int kMaxClusterSize = 16;

template <int BLOCK>
struct ClusterHead {
  Smem<BLOCK, BLOCK> base;        // Row's block scratch; base.hist = the merged histogram
  uint32_t lhist[2][kMaxBins];    // this CTA's histogram, double-buffered over the rounds
  float lstat[6];                 // this CTA's softmax statistics
  uint32_t lflags;
  float lacc;                     // this CTA's jsd/tvd/l2 sum
  uint32_t lties;                 // this CTA's ties at the threshold
};
// Columns per CTA: ceil(cols / cs) rounded up to whole 16-byte slots (ve elements).
DETOX_HD constexpr int64_t cluster_chunk(int64_t cols, int64_t ve, int64_t cs = kClusterSize) {
  return ((cols + cs - 1) / cs + ve - 1) / ve * ve;
}
// Bytes of dynamic shared memory for a chunk of `chunk` elements of T.
template <typename T, int BLOCK>
DETOX_HD constexpr size_t cluster_smem_bytes(int64_t chunk) {
  return ((sizeof(ClusterHead<BLOCK>) + 15) / 16) * 16 + 2 * static_cast<size_t>(chunk) * sizeof(T);
}

template <typename T, int BLOCK, int VE>
struct ClusterRow {
  using R = Row<T, BLOCK, BLOCK, VE>;
  using SlotT = Slot<T, VE>;
  ClusterHead<BLOCK>& hd;
  T* xs;  // shared copies of this CTA's chunk
  T* ys;
  unsigned tid, lane, warp, rank;
  unsigned cs;  // CTAs in the cluster

  // Merges the CTAs' histograms hd.lhist[buf] into hd.base.hist (bins [0, nbins)).
  SOCD_DEV void merge_hist(int buf, int nbins) {
    for (int b = static_cast<int>(tid); b < nbins; b += BLOCK) {
      uint32_t sum = 0;
#pragma unroll
      for (unsigned q = 0; q < cs; ++q) sum += dev::map_shared(&hd.lhist[buf][0], q)[b];
      hd.base.hist[b] = sum;
    }
  }

  SOCD_DEV void run(const T* xg, const T* yg, T* outg, const SocdParams& p, int64_t chunk, bool inplace,
                    float* alpha_out, float* div_out, int32_t* k_out) {
    const float ninf = -f_inf();
    const int div = p.divergence;
    const bool kl = div == int(Divergence::FKL) || div == int(Divergence::RKL) || div == int(Divergence::SKL);
    const int64_t c0 = static_cast<int64_t>(rank) * chunk;
    auto clampn = [&](int64_t n) { return n < 0 ? int64_t(0) : (n > chunk ? chunk : n); };
    const int64_t Wl = clampn(p.cols - c0);   // this CTA's columns
    const int64_t Vl = clampn(p.vocab - c0);  // of which take part

    dev::cluster_sync();  // the previous row's remote readers of this CTA's shared memory are done

    // ---- load the chunk into shared memory (the only global read of the row)
    {
      R g{hd.base, xg + c0, yg + c0, nullptr, Wl, Wl, tid, lane, warp};
      const int64_t nslots = (Wl + VE - 1) / VE;
      constexpr int UL = 4;
      for (int64_t base = tid; base < nslots; base += static_cast<int64_t>(BLOCK) * UL) {
        SlotT xb[UL], yb[UL];
#pragma unroll
        for (int u = 0; u < UL; ++u) {
          g.load_slot(g.x, base + u * BLOCK, Wl, xb[u]);
          g.load_slot(g.y, base + u * BLOCK, Wl, yb[u]);
        }
#pragma unroll
        for (int u = 0; u < UL; ++u) {
          const int64_t slot = base + u * BLOCK;
          if (slot < nslots) {
            if constexpr (VE > 1) {  // chunk is a multiple of VE: whole slots fit
              Raw16 rx, ry;
#pragma unroll
              for (int i = 0; i < 4; ++i) {
                rx.w[i] = xb[u].w[i];
                ry.w[i] = yb[u].w[i];
              }
              dev::store16(xs + slot * VE, rx);
              dev::store16(ys + slot * VE, ry);
            } else {
              Storage<T>::store(xs + slot, xb[u].w[0]);
              Storage<T>::store(ys + slot, yb[u].w[0]);
            }
          }
        }
      }
    }
    dev::sync();
    R r{hd.base, xs, ys, outg + c0, Vl, Wl, tid, lane, warp};

    // ---- pass 1: softmax statistics and validity, merged over the cluster
    Online ox{ninf, 0.f, 0.f}, oy{ninf, 0.f, 0.f};
    uint32_t flags = 0;
    r.template for_slots<true>(Vl, [&](int64_t, int cnt, const SlotT& xb, const SlotT& yb) {
#pragma unroll
      for (int e = 0; e < VE; ++e) {
        if (e < cnt) {
          const float a = Storage<T>::to_f(xb.get(e));
          const float b = Storage<T>::to_f(yb.get(e));
          const bool af = a != ninf, bf = b != ninf;
          flags |= ((a != a) | (b != b) | (a == f_inf()) | (b == f_inf())) ? 1u : 0u;
          flags |= (af && !bf) ? 2u : 0u;
          flags |= (bf && !af) ? 4u : 0u;
          const bool both = af && bf;
          if (af) online_add(ox, a, both ? a - b : 0.f);
          if (bf) online_add(oy, b, both ? b - a : 0.f);
        }
      }
    });
    r.block_stats(ox, oy, flags);
    if (tid == 0) {
      hd.lstat[0] = ox.m;
      hd.lstat[1] = ox.s;
      hd.lstat[2] = ox.t;
      hd.lstat[3] = oy.m;
      hd.lstat[4] = oy.s;
      hd.lstat[5] = oy.t;
      hd.lflags = flags;
    }
    dev::cluster_sync();
    ox = Online{ninf, 0.f, 0.f};
    oy = Online{ninf, 0.f, 0.f};
    flags = 0;
    for (unsigned q = 0; q < cs; ++q) {
      const float* st = dev::map_shared(&hd.lstat[0], q);
      ox = online_merge(ox, Online{st[0], st[1], st[2]});
      oy = online_merge(oy, Online{st[3], st[4], st[5]});
      flags |= *dev::map_shared(&hd.lflags, q);
    }

    const bool valid = (flags & 1u) == 0 && ox.m != ninf && oy.m != ninf && p.vocab > 0;
    if (tid == 0 && rank == 0 && !valid) SOCD_TRACE("cluster: row invalid");
    float d = dev::u2f(0x7fc00000u);
    float alpha = 0.f;
    int64_t k = 0;
    uint32_t m = 0;
    uint32_t thr = 0;
    uint32_t J = kAllIds;    // chunk-local tie cut-off
    bool ties_none = false;  // none of this CTA's ties at thr are taken
    float c = 0.f;

    if (valid) {
      const float lse_x = ox.m + dev::flog(ox.s);
      const float lse_y = oy.m + dev::flog(oy.s);
      c = lse_y - lse_x;
      const float lx2 = lse_x * kLog2e, ly2 = lse_y * kLog2e;
      if (kl) {
        const float fkl = (flags & 2u) ? f_inf() : ox.t / ox.s - lse_x + lse_y;
        const float rkl = (flags & 4u) ? f_inf() : oy.t / oy.s - lse_y + lse_x;
        d = div == int(Divergence::FKL) ? fkl : div == int(Divergence::RKL) ? rkl : 0.5f * (fkl + rkl);
        if (is_finite(d)) {
          alpha = socd_alpha(d);
          k = socd_k(alpha, p);
        }
      }
      if (!kl || k > 0) {
        // ---- pass 2: candidates and the first histogram; jsd/tvd/l2 sum
        for (int i = static_cast<int>(tid); i < kMaxBins; i += BLOCK) hd.lhist[0][i] = 0;
        dev::sync();
        const uint32_t dmask0 = (1u << digit_bits(0)) - 1u;
        const int shift0 = digit_shift(0);
        float acc = 0.f;
        r.template for_slots<true>(Vl, [&](int64_t, int cnt, const SlotT& xb, const SlotT& yb) {
#pragma unroll
          for (int e = 0; e < VE; ++e) {
            if (e < cnt) {
              const float a = Storage<T>::to_f(xb.get(e));
              const float b = Storage<T>::to_f(yb.get(e));
              const float key = b - a;
              if (key > c) dev::atomic_add(&hd.lhist[0][(ordered_bits(key) >> shift0) & dmask0], 1u);
              if (!kl) {
                const float lp = a - lse_x, lq = b - lse_y;
                const float pj = dev::fexp2(fmaf(a, kLog2e, -lx2)), qj = dev::fexp2(fmaf(b, kLog2e, -ly2));
                if (div == int(Divergence::TVD)) {
                  acc += fabsf(pj - qj);
                } else if (div == int(Divergence::L2)) {
                  acc += (pj - qj) * (pj - qj);
                } else {
                  const float mj = 0.5f * (pj + qj);
                  if (mj > 0.f) {
                    const float lm = dev::flog(mj);
                    if (pj > 0.f) acc += pj * (lp - lm);
                    if (qj > 0.f) acc += qj * (lq - lm);
                  }
                }
              }
            }
          }
        });
        if (!kl) {
          const float sum = r.block_sum(acc);
          if (tid == 0) hd.lacc = sum;
        }
        dev::cluster_sync();
        merge_hist(0, 1 << digit_bits(0));
        if (!kl) {
          float sum = 0.f;
          for (unsigned q = 0; q < cs; ++q) sum += *dev::map_shared(&hd.lacc, q);
          d = div == int(Divergence::L2) ? dev::fsqrt(sum) : 0.5f * sum;
          if (is_finite(d)) {
            alpha = socd_alpha(d);
            k = socd_k(alpha, p);
          }
        }
        const bool sel_ok = is_finite(d) && k > 0;
        const Pick p0 = r.pick_digit(1 << digit_bits(0), [&](uint32_t npos) -> uint32_t {
          if (!sel_ok) return 0u;
          return k < static_cast<int64_t>(npos) ? static_cast<uint32_t>(k) : npos;
        });
        m = p0.need;
        const uint32_t npos = p0.total;
        if (tid == 0 && rank == 0) {
          if (m == 0) SOCD_TRACE("cluster: m == 0 after pass 2");
          else if (m == npos) SOCD_TRACE("cluster: m == npos");
          else SOCD_TRACE("cluster: radix");
        }
        if (m > 0 && m < npos) {
          uint32_t need = m - p0.above;
          uint32_t pref = p0.digit << shift0;
          uint32_t mask = dmask0 << shift0;
          uint32_t H = p0.count;
          bool done = H == need;
          for (int rd = 1; rd < kRounds && !done; ++rd) {
            const int shift = digit_shift(rd);
            const uint32_t dmask = (1u << digit_bits(rd)) - 1u;
            const int buf = rd & 1;
            // lhist[buf] was last read remotely two rounds ago, before the last cluster barrier
            for (int i = static_cast<int>(tid); i <= static_cast<int>(dmask); i += BLOCK) hd.lhist[buf][i] = 0;
            dev::sync();
            r.template for_slots<true>(Vl, [&](int64_t, int cnt, const SlotT& xb, const SlotT& yb) {
#pragma unroll
              for (int e = 0; e < VE; ++e) {
                if (e < cnt) {
                  const float key = Storage<T>::to_f(yb.get(e)) - Storage<T>::to_f(xb.get(e));
                  if (key > c) {
                    const uint32_t ob = ordered_bits(key);
                    if ((ob & mask) == pref) dev::atomic_add(&hd.lhist[buf][(ob >> shift) & dmask], 1u);
                  }
                }
              }
            });
            dev::cluster_sync();
            merge_hist(buf, static_cast<int>(dmask) + 1);
            const Pick pr = r.pick_digit(static_cast<int>(dmask) + 1, [&](uint32_t) { return need; });
            need -= pr.above;
            pref |= pr.digit << shift;
            mask |= dmask << shift;
            H = pr.count;
            done = H == need;
          }
          thr = pref;
          if (tid == 0 && rank == 0 && done) SOCD_TRACE("cluster: a bucket taken whole");
          if (!done) {
            // ---- ties: the CTAs hold consecutive columns, so the lowest ids are taken from
            // the lowest ranks first: this CTA takes quota = clamp(need - ties before it).
            uint32_t mine = 0;
            r.template for_slots<true>(Vl, [&](int64_t, int cnt, const SlotT& xb, const SlotT& yb) {
#pragma unroll
              for (int e = 0; e < VE; ++e) {
                if (e < cnt) {
                  const float key = Storage<T>::to_f(yb.get(e)) - Storage<T>::to_f(xb.get(e));
                  if (key > c && ordered_bits(key) == thr) ++mine;
                }
              }
            });
            uint32_t total_mine;
            r.block_excl_scan(mine, total_mine);
            if (tid == 0) hd.lties = total_mine;
            dev::cluster_sync();
            uint32_t before = 0;
            for (unsigned q = 0; q < rank; ++q) before += *dev::map_shared(&hd.lties, q);
            const uint32_t quota = need > before ? (need - before < total_mine ? need - before : total_mine) : 0u;
            if (tid == 0 && rank == 0) SOCD_TRACE("cluster: ties");
            if (quota == 0) {
              ties_none = true;
            } else if (quota < total_mine) {
              J = r.tie_scan(thr, c, quota);
            }
          }
        } else if (m > 0) {
          thr = 0;
        }
      }
    }

    if (tid == 0 && rank == 0) {
      *alpha_out = alpha;
      *div_out = d;
      *k_out = static_cast<int32_t>(m);
    }

    // ---- write this CTA's columns
    if (m > 0) {
      const bool signed_sub = p.signed_sub;
      r.template for_slots<true>(Wl, [&](int64_t j0, int cnt, SlotT& xb, const SlotT& yb) {
        uint32_t changed = 0;
#pragma unroll
        for (int e = 0; e < VE; ++e) {
          const int64_t j = j0 + e;
          if (e < cnt && j < Vl) {
            const float a = Storage<T>::to_f(xb.get(e));
            const float b = Storage<T>::to_f(yb.get(e));
            const float key = b - a;
            if (key > c) {
              const uint32_t ob = ordered_bits(key);
              if (ob > thr || (ob == thr && !ties_none && static_cast<uint32_t>(j) <= J)) {
                const float sub = signed_sub ? b : fabsf(b);
                xb.set(e, Storage<T>::from_f(dev::sub_rn(a, dev::mul_rn(alpha, sub))));
                changed |= 1u << e;
              }
            }
          }
        }
        if (cnt > 0 && (!inplace || changed)) r.store_slot(j0, cnt, xb, inplace ? changed : 0xffffffffu);
      });
    } else if (!inplace) {
      r.template for_slots<false>(Wl, [&](int64_t j0, int cnt, SlotT& xb, const SlotT&) {
        if (cnt > 0) r.store_slot(j0, cnt, xb, 0xffffffffu);
      });
    }
  }
};

// All rows handled by this cluster (grid-stride over clusters). smem: the dynamic shared memory
// (16-byte aligned), cluster_smem_bytes<T, BLOCK>(chunk) bytes.
template <typename T, int BLOCK, int VE>
SOCD_DEV void socd_cluster_rows(const T* x, const T* y, T* out, const SocdParams& p, int64_t chunk, bool inplace,
                                float* alpha, float* div, int32_t* k, unsigned char* smem) {
  auto& hd = *reinterpret_cast<ClusterHead<BLOCK>*>(smem);
  constexpr size_t head = ((sizeof(ClusterHead<BLOCK>) + 15) / 16) * 16;
  T* xs = reinterpret_cast<T*>(smem + head);
  T* ys = xs + chunk;
  const unsigned tid = dev::thread_id();
  ClusterRow<T, BLOCK, VE> cr{hd, xs, ys, tid, tid & 31u, tid >> 5, dev::cluster_rank(), dev::cluster_size()};
  for (int64_t row = dev::cluster_id(); row < p.rows; row += dev::num_clusters()) {
    cr.run(x + row * p.x_stride, y + row * p.y_stride, out + row * p.out_stride, p, chunk, inplace, alpha + row,
           div + row, k + row);
  }
  dev::cluster_sync();  // no CTA leaves while another may still read its shared memory
}

}  // namespace socd

#if defined(__CUDACC__)
// BLOCK threads per CTA, CAP list entries, VE elements per 16-byte slot (1: unaligned rows).
// Two CTAs per SM (<= 64 registers at 512 threads), so that one CTA's barriers and reductions
// overlap with the other's loads.
template <typename T, int BLOCK, int CAP, int VE>
__global__ void __launch_bounds__(BLOCK, 2) socd_kernel(const T* x, const T* y, T* out, SocdParams p, bool inplace,
                                                     float* alpha, float* div, int32_t* k) {
  __shared__ socd::Smem<BLOCK, CAP> smem;
  socd::socd_rows<T, BLOCK, CAP, VE>(x, y, out, p, inplace, alpha, div, k, smem);
}

// Cluster path: at most 64 registers at 512 threads (__launch_bounds__(BLOCK, 2)), so that two
// CTAs share an SM wherever their shared memory fits (e.g. fp32 rows of 151,936 in 16-CTA
// clusters, bf16 rows in 8-CTA clusters); launched with a cluster dimension of 8 or 16 and
// socd::cluster_smem_bytes<T, BLOCK>(chunk) bytes of dynamic shared memory, on sm_90+ only.
template <typename T, int BLOCK, int VE>
__global__ void __launch_bounds__(BLOCK, 2) socd_cluster_kernel(const T* x, const T* y, T* out, SocdParams p,
                                                                int64_t chunk, bool inplace, float* alpha,
                                                                float* div, int32_t* k) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(16) unsigned char socd_dsmem[];
  socd::socd_cluster_rows<T, BLOCK, VE>(x, y, out, p, chunk, inplace, alpha, div, k, socd_dsmem);
#else
  __trap();  // the launcher uses it on sm_90+ only
#endif
}
#endif

}  // namespace cuda
}  // namespace detox
