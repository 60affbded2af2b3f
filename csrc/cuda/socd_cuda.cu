// Launcher of the SoCD CUDA kernels (socd_kernel.cuh): path, dtype and alignment dispatch; no
// torch headers, no host synchronisation.
//
// Paths:
//   - cluster (sm_90+): one cluster of CTAs per row, the row held in shared memory; used when the
//     row fits (cols up to ~200k fp32 / ~400k fp16 on an H100 with 8 CTAs). 16 CTAs per row
//     (a non-portable cluster size) when the batch is small (rows <= kSmallBatch), so that one row
//     is spread over twice the SMs; 8 otherwise, and 8 when a 16-CTA launch is refused;
//   - single CTA per row: every other case (sm_80, wider rows, or DETOX_SOCD_CLUSTER=0).
// If a cluster launch is refused (cudaLaunchKernelEx returns an error, e.g. no room for a cluster
// of that size), the error is cleared and the single-CTA kernel runs instead.
#include "socd_cuda.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "socd_kernel.cuh"

namespace detox {
namespace cuda {
namespace {

constexpr int kBlock = 512;  // threads per CTA (both paths)
constexpr int kCap = 4096;   // single-CTA path: shared (key, id) list entries (32 KiB)
constexpr int64_t kMaxGrid = 65535;
constexpr int64_t kMaxClusters = 8192;
constexpr int kMaxDevices = 64;

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

constexpr int64_t kSmallBatch = 8;  // rows up to which a row gets 16 CTAs

// DETOX_SOCD_CLUSTER (read once): 0 disables the cluster path; 8 or 16 forces that cluster size;
// unset (or anything else): 16 at rows <= kSmallBatch, else 8.
int cluster_mode_by_env() {
  static const int mode = [] {
    const char* v = std::getenv("DETOX_SOCD_CLUSTER");
    if (v == nullptr) return -1;
    if (std::strcmp(v, "0") == 0) return 0;
    if (std::strcmp(v, "8") == 0) return 8;
    if (std::strcmp(v, "16") == 0) return 16;
    return -1;
  }();
  return mode;
}

struct DeviceInfo {
  int cc_major = 0;
  int smem_optin = 0;  // max dynamic shared memory per block after opt-in
};
// Per-device attributes, queried once (benign race: every thread computes the same values).
DeviceInfo device_info(int dev) {
  static std::atomic<int> cached[kMaxDevices][2];
  static std::atomic<bool> ready[kMaxDevices];
  DeviceInfo info;
  if (dev >= 0 && dev < kMaxDevices && ready[dev].load(std::memory_order_acquire)) {
    info.cc_major = cached[dev][0].load(std::memory_order_relaxed);
    info.smem_optin = cached[dev][1].load(std::memory_order_relaxed);
    return info;
  }
  if (cudaDeviceGetAttribute(&info.cc_major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&info.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return DeviceInfo{};
  }
  if (dev >= 0 && dev < kMaxDevices) {
    cached[dev][0].store(info.cc_major, std::memory_order_relaxed);
    cached[dev][1].store(info.smem_optin, std::memory_order_relaxed);
    ready[dev].store(true, std::memory_order_release);
  }
  return info;
}

// Raises the dynamic shared memory limit of socd_cluster_kernel<T, kBlock, VE> on device `dev` to
// the device's opt-in maximum (once per kernel and device); false if `bytes` exceed it.
template <typename T, int VE>
bool allow_smem(int dev, int optin, size_t bytes) {
  static std::atomic<bool> done[kMaxDevices];  // one array per kernel (T, VE)
  auto kernel = socd_cluster_kernel<T, kBlock, VE>;
  if (bytes > static_cast<size_t>(optin)) return false;
  if (dev >= 0 && dev < kMaxDevices && done[dev].load(std::memory_order_acquire)) return true;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  // 16-CTA clusters are non-portable: allowed per kernel (refused launches fall back to 8).
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess) {
    (void)cudaGetLastError();
  }
  if (dev >= 0 && dev < kMaxDevices) done[dev].store(true, std::memory_order_release);
  return true;
}

// Whether at least one cluster of cfg's (non-portable) size fits on device `dev`, asked before the
// launch so that a refused launch cannot invalidate a CUDA-graph capture; cached per device and
// width (the shared memory per CTA depends on the width only).
template <typename T, int VE, class K>
bool fits_large_cluster(int dev, int64_t cols, K kernel, const cudaLaunchConfig_t& cfg) {
  static std::atomic<int64_t> cached_cols[kMaxDevices];
  static std::atomic<int> cached_ok[kMaxDevices];
  const bool cacheable = dev >= 0 && dev < kMaxDevices;
  if (cacheable && cached_cols[dev].load(std::memory_order_acquire) == cols + 1) {
    return cached_ok[dev].load(std::memory_order_relaxed) != 0;
  }
  int n = 0;
  if (cudaOccupancyMaxActiveClusters(&n, kernel, &cfg) != cudaSuccess) {
    (void)cudaGetLastError();
    n = 0;
  }
  if (cacheable) {
    cached_ok[dev].store(n > 0 ? 1 : 0, std::memory_order_relaxed);
    cached_cols[dev].store(cols + 1, std::memory_order_release);
  }
  return n > 0;
}

// One cluster launch with cs CTAs per row; false (error cleared) when it is refused.
template <typename T, int VE>
bool launch_cluster(int cs, int dev, const DeviceInfo& info, const T* x, const T* y, T* out, float* alpha,
                    float* divergence, int32_t* k, const SocdParams& p, bool inplace, cudaStream_t stream) {
  const int64_t chunk = socd::cluster_chunk(p.cols, VE, cs);
  const size_t bytes = socd::cluster_smem_bytes<T, kBlock>(chunk);
  if (!allow_smem<T, VE>(dev, info.smem_optin, bytes)) return false;
  auto kernel = socd_cluster_kernel<T, kBlock, VE>;
  const int64_t clusters = p.rows < kMaxClusters ? p.rows : kMaxClusters;

  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(clusters * cs), 1, 1);
  cfg.blockDim = dim3(kBlock, 1, 1);
  cfg.dynamicSmemBytes = bytes;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(cs);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  if (cs > socd::kClusterSize && !fits_large_cluster<T, VE>(dev, p.cols, kernel, cfg)) return false;
  if (cudaLaunchKernelEx(&cfg, kernel, x, y, out, p, chunk, inplace, alpha, divergence, k) != cudaSuccess) {
    (void)cudaGetLastError();  // a refused configuration is not sticky: fall back
    return false;
  }
  return true;
}

template <typename T, int VE>
bool try_cluster(const T* x, const T* y, T* out, float* alpha, float* divergence, int32_t* k, const SocdParams& p,
                 bool inplace, cudaStream_t stream) {
  const int mode = cluster_mode_by_env();
  if (mode == 0) return false;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  const DeviceInfo info = device_info(dev);
  if (info.cc_major < 9) return false;
  const int first = mode > 0 ? mode : (p.rows <= kSmallBatch ? socd::kMaxClusterSize : socd::kClusterSize);
  for (int cs = first; cs >= socd::kClusterSize; cs /= 2) {
    if (launch_cluster<T, VE>(cs, dev, info, x, y, out, alpha, divergence, k, p, inplace, stream)) return true;
  }
  return false;
}

template <typename T>
cudaError_t launch_typed(const void* x, const void* y, void* out, float* alpha, float* divergence, int32_t* k,
                         const SocdParams& p, cudaStream_t stream) {
  constexpr int kVec = static_cast<int>(16 / sizeof(T));
  // 16-byte slots need every row of x, y and out to start on a 16-byte boundary.
  const bool vec = aligned16(x) && aligned16(y) && aligned16(out) && p.x_stride % kVec == 0 &&
                   p.y_stride % kVec == 0 && p.out_stride % kVec == 0;
  // In place: out is base itself (the binding's checks make the shapes equal).
  const bool inplace = out == x && p.out_stride == p.x_stride;
  const T* xt = static_cast<const T*>(x);
  const T* yt = static_cast<const T*>(y);
  T* ot = static_cast<T*>(out);
  const bool clustered = vec ? try_cluster<T, kVec>(xt, yt, ot, alpha, divergence, k, p, inplace, stream)
                             : try_cluster<T, 1>(xt, yt, ot, alpha, divergence, k, p, inplace, stream);
  if (!clustered) {
    const int grid = static_cast<int>(p.rows < kMaxGrid ? p.rows : kMaxGrid);
    if (vec) {
      socd_kernel<T, kBlock, kCap, kVec><<<grid, kBlock, 0, stream>>>(xt, yt, ot, p, inplace, alpha, divergence, k);
    } else {
      socd_kernel<T, kBlock, kCap, 1><<<grid, kBlock, 0, stream>>>(xt, yt, ot, p, inplace, alpha, divergence, k);
    }
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_socd(DType dtype, const void* x, const void* y, void* out, float* alpha, float* divergence,
                        int32_t* k, const SocdParams& p, cudaStream_t stream) {
  if (p.rows <= 0) return cudaSuccess;
  switch (dtype) {
    case DType::F32:
      return launch_typed<float>(x, y, out, alpha, divergence, k, p, stream);
    case DType::F16:
      return launch_typed<half_t>(x, y, out, alpha, divergence, k, p, stream);
    case DType::BF16:
      return launch_typed<bfloat16_t>(x, y, out, alpha, divergence, k, p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace detox
