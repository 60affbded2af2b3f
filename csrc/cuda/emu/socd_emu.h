// CPU emulation of the few CUDA primitives socd_kernel.cuh uses, so that the kernel's device
// logic can be compiled by a host C++ compiler and tested without a GPU: one fiber per CUDA
// thread, a barrier per block for __syncthreads, one per warp for the shuffles and one per
// thread-block cluster for cluster.sync(), and distributed shared memory as plain pointers into
// the other blocks' shared memory. A shuffle reached by only part of a warp, or a barrier some
// threads skip, is reported as a deadlock.
// Test-only; include it before socd_kernel.cuh with DETOX_SOCD_EMULATION defined.
#pragma once

#ifndef DETOX_SOCD_EMULATION
#define DETOX_SOCD_EMULATION 1
#endif

#include <setjmp.h>
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "../../common/socd_params.h"

namespace detox {
namespace cuda {

struct Raw16;

namespace dev {

// Cooperative scheduler: the threads of one cluster (of `csize` blocks; 1 without clusters) are
// fibers on this OS thread; a fiber runs until it reaches a barrier, so a read that misses a
// barrier sees only the work of the threads that ran before it (and fails the test).
struct Fiber {
  ucontext_t ctx;  // only to start the fiber on its own stack
  jmp_buf jb;      // switches: _setjmp/_longjmp, which unlike swapcontext make no system call
  bool started = false;
  int wait = 0;  // 0 runnable, 1 block barrier, 2 warp barrier, 3 cluster barrier
  bool done = false;
};
struct EmuGroup {
  int threads = 0;  // per block
  int csize = 1;    // blocks in the cluster
  int cur = 0;      // running fiber: block * threads + thread
  ucontext_t main;
  jmp_buf main_jb;
  std::vector<Fiber> fibers;
  std::vector<int> block_arrived, warp_arrived;
  int cluster_arrived = 0;
  std::vector<uint32_t> warp_buf;
  std::vector<char*> smem;  // per block
  int64_t first_block = 0;  // grid index of block 0 of this cluster
  std::function<void(void*)> body;
};
inline EmuGroup* g_grp = nullptr;
inline int64_t g_nblocks = 1;

inline unsigned thread_id() { return static_cast<unsigned>(g_grp->cur % g_grp->threads); }
inline int local_block() { return g_grp->cur / g_grp->threads; }
inline int64_t block_id() { return g_grp->first_block + local_block(); }
inline int64_t num_blocks() { return g_nblocks; }
inline unsigned cluster_rank() { return static_cast<unsigned>(local_block()); }
inline unsigned cluster_size() { return static_cast<unsigned>(g_grp->csize); }
inline int64_t cluster_id() { return g_grp->first_block / g_grp->csize; }
inline int64_t num_clusters() { return g_nblocks / g_grp->csize; }

inline void yield_to_scheduler() {
  EmuGroup& g = *g_grp;
  if (_setjmp(g.fibers[g.cur].jb) == 0) _longjmp(g.main_jb, 1);
}
// Barrier over fibers [first, first + n) of kind `kind`.
inline void barrier(int& arrived, int first, int n, int kind) {
  EmuGroup& g = *g_grp;
  if (++arrived == n) {
    arrived = 0;
    for (int f = first; f < first + n; ++f) {
      if (g.fibers[f].wait == kind) g.fibers[f].wait = 0;
    }
    return;
  }
  g.fibers[g.cur].wait = kind;
  yield_to_scheduler();
}
inline void sync() {
  EmuGroup& g = *g_grp;
  const int b = local_block();
  barrier(g.block_arrived[b], b * g.threads, g.threads, 1);
}
inline void warp_sync() {
  EmuGroup& g = *g_grp;
  const int w = g.cur / 32;
  barrier(g.warp_arrived[w], w * 32, 32, 2);
}
inline void cluster_sync() {
  EmuGroup& g = *g_grp;
  barrier(g.cluster_arrived, 0, g.threads * g.csize, 3);
}
// The address of the object at `p` (in this block's shared memory) in block `rank`'s.
template <class P>
inline P* map_shared(P* p, unsigned rank) {
  EmuGroup& g = *g_grp;
  const char* mine = g.smem[local_block()];
  return reinterpret_cast<P*>(g.smem[rank] + (reinterpret_cast<const char*>(p) - mine));
}

// Every lane publishes v; returns lane src's value.
inline uint32_t exchange(uint32_t v, int src) {
  EmuGroup& g = *g_grp;
  const int w = g.cur / 32;
  g.warp_buf[g.cur] = v;
  warp_sync();
  const uint32_t r = g.warp_buf[w * 32 + (src & 31)];
  warp_sync();
  return r;
}
inline int lane_id() { return static_cast<int>(thread_id() % 32); }
inline float u2f(uint32_t u) { return bits_to_float(u); }
inline uint32_t f2u(float f) { return float_to_bits(f); }
inline uint32_t shfl_xor(uint32_t v, int m) { return exchange(v, lane_id() ^ m); }
inline float shfl_xor(float v, int m) { return u2f(shfl_xor(f2u(v), m)); }
inline uint32_t shfl(uint32_t v, int src) { return exchange(v, src); }
inline uint32_t shfl_up(uint32_t v, int d) {
  const int lane = lane_id();
  return exchange(v, lane >= d ? lane - d : lane);
}
inline uint32_t atomic_add(uint32_t* a, uint32_t v) {
  const uint32_t old = *a;
  *a = old + v;
  return old;
}
inline uint32_t load_volatile(const uint32_t* a) { return *a; }
inline int popc(uint32_t v) { return __builtin_popcount(v); }
inline float fexp(float v) { return std::exp(v); }
inline float fexp2(float v) { return std::exp2(v); }
inline float flog(float v) { return std::log(v); }
inline float fsqrt(float v) { return std::sqrt(v); }
inline float mul_rn(float a, float b) {
  volatile float r = a * b;  // no contraction
  return r;
}
inline float sub_rn(float a, float b) {
  volatile float r = a - b;
  return r;
}
inline float half_bits_to_float(uint32_t b) { return to_float(half_t{static_cast<uint16_t>(b)}); }
inline uint32_t float_to_half_bits(float f) { return from_float<half_t>(f).bits; }
inline float bf16_bits_to_float(uint32_t b) { return u2f(b << 16); }
inline uint32_t float_to_bf16_bits(float f) { return from_float<bfloat16_t>(f).bits; }
template <class R = Raw16>
inline R load16(const void* p) {
  R r;
  std::memcpy(&r, p, 16);
  return r;
}
template <class R>
inline void store16(void* p, const R& r) {
  std::memcpy(p, &r, 16);
}

inline void fiber_entry() {
  EmuGroup& g = *g_grp;
  g.body(g.smem[local_block()]);
  g_grp->fibers[g_grp->cur].done = true;
  _longjmp(g_grp->main_jb, 1);
}

// Resumes (or starts) fiber f until it yields or ends.
__attribute__((noinline)) inline void run_fiber(EmuGroup& g, int f) {
  Fiber& fb = g.fibers[f];
  g.cur = f;
  if (_setjmp(g.main_jb) == 0) {
    if (!fb.started) {
      fb.started = true;
      swapcontext(&g.main, &fb.ctx);
    } else {
      _longjmp(fb.jb, 1);
    }
  }
}

// Runs body(shared memory of the block) as `grid` blocks of `block` threads in clusters of
// `csize` blocks (clusters one after another), each block with `smem_bytes` of shared memory
// (filled with garbage). Aborts on a deadlock.
inline void launch_raw(int grid, int block, int csize, size_t smem_bytes, std::function<void(void*)> body) {
  constexpr size_t kStack = 128 * 1024;
  static std::vector<std::unique_ptr<char[]>> stacks;  // reused across launches
  const int nf = block * csize;
  while (stacks.size() < static_cast<size_t>(nf)) stacks.emplace_back(new char[kStack]);
  if (grid % csize != 0) {
    std::fprintf(stderr, "emulation: grid %d is not a multiple of the cluster size %d\n", grid, csize);
    std::abort();
  }
  for (int c0 = 0; c0 < grid; c0 += csize) {
    std::vector<std::unique_ptr<char[]>> smem;
    EmuGroup g;
    for (int b = 0; b < csize; ++b) {
      smem.emplace_back(new char[smem_bytes + 16]);
      char* p = smem.back().get();
      p += (16 - reinterpret_cast<uintptr_t>(p) % 16) % 16;
      std::memset(p, 0xcd, smem_bytes);  // uninitialised shared memory
      g.smem.push_back(p);
    }
    g.threads = block;
    g.csize = csize;
    g.first_block = c0;
    g.fibers.resize(nf);
    g.block_arrived.assign(csize, 0);
    g.warp_arrived.assign(nf / 32, 0);
    g.warp_buf.assign(nf, 0);
    g.body = body;
    g_grp = &g;
    g_nblocks = grid;
    for (int f = 0; f < nf; ++f) {
      Fiber& fb = g.fibers[f];
      getcontext(&fb.ctx);
      fb.ctx.uc_stack.ss_sp = stacks[f].get();
      fb.ctx.uc_stack.ss_size = kStack;
      fb.ctx.uc_link = &g.main;
      makecontext(&fb.ctx, fiber_entry, 0);
    }
    // Each step picks a block at random and runs it as far as it gets (until all its threads wait
    // at the cluster barrier or end), so that the blocks of a cluster drift apart as much as the
    // barriers allow: a missing cluster barrier shows up as a read of unfinished data.
    static uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (;;) {
      bool all_done = true;
      for (const Fiber& fb : g.fibers) all_done = all_done && fb.done;
      if (all_done) break;
      rng ^= rng << 13;
      rng ^= rng >> 7;
      rng ^= rng << 17;
      const int start = static_cast<int>(rng % static_cast<uint64_t>(csize));
      bool any = false;
      for (int i = 0; i < csize && !any; ++i) {
        const int b = (start + i) % csize;
        for (bool progress = true; progress;) {
          progress = false;
          for (int f = b * block; f < (b + 1) * block; ++f) {
            const Fiber& fb = g.fibers[f];
            if (fb.done || fb.wait != 0) continue;
            any = progress = true;
            run_fiber(g, f);
          }
        }
      }
      if (!any) {
        std::fprintf(stderr, "emulation deadlock: threads wait at a barrier that others never reach\n");
        std::abort();
      }
    }
    g_grp = nullptr;
  }
}

// One block per grid index, static shared memory of type Smem.
template <class Smem, class Body>
void launch(int grid, int block, Body body) {
  launch_raw(grid, block, 1, sizeof(Smem), [&](void* s) { body(*static_cast<Smem*>(s)); });
}

}  // namespace dev
}  // namespace cuda
}  // namespace detox
