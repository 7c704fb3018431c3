// Named device allocations, the out-of-memory message and checked copies (see device_memory.h). Every
// CUDA call is checked and reports file:line, the call, what it was for and a hint.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device_memory.h"
#include "kernels/cuda/runtime.h"

#if defined(SCMOE_SIMT_EMU)
#include <unistd.h>
#endif

SCMOE_CUDA_BEGIN

namespace {
struct Registry {
  std::mutex mu;
  std::unordered_map<void*, size_t> live;
  size_t in_use = 0;
  size_t estimate = 0;
  std::string breakdown;
};
Registry& registry() {
  static Registry r;
  return r;
}

#if !defined(SCMOE_SIMT_EMU)
// A failed runtime call: the call, its purpose, CUDA's text and where to look.
#define SCMOE_CUDA_CHECK_FOR(call, what)                                                                    \
  do {                                                                                                      \
    cudaError_t err_ = (call);                                                                              \
    SCMOE_CHECK(err_ == cudaSuccess, #call                                                                  \
                                         << " failed for " << (what) << ": " << cudaGetErrorString(err_)    \
                                         << " (a fault in an earlier kernel also surfaces here; run under " \
                                            "compute-sanitizer to find it)");                               \
  } while (0)
#endif

[[noreturn]] void throw_oom(const std::string& what, size_t bytes) {
  size_t in_use, estimate;
  std::string breakdown;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    in_use = r.in_use, estimate = r.estimate, breakdown = r.breakdown;
  }
  throw scmoe::Error(oom_message(what, bytes, device_mem_info(), in_use, estimate, breakdown));
}
}  // namespace

std::string format_bytes(size_t bytes) {
  static const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = double(bytes) / 1024;
  int u = 0;
  while (v >= 1024 && u < 3) v /= 1024, u++;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f %s", v, units[u]);
  return buf;
}

void set_memory_estimate(size_t bytes, const std::string& breakdown) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.estimate = bytes, r.breakdown = breakdown;
}

DeviceMemInfo device_mem_info() {
  DeviceMemInfo info;
#if defined(SCMOE_SIMT_EMU)
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  info.total = size_t(sysconf(_SC_PHYS_PAGES)) * page;
  info.free = size_t(sysconf(_SC_AVPHYS_PAGES)) * page;
#else
  SCMOE_CUDA_CHECK_FOR(cudaMemGetInfo(&info.free, &info.total), "the device's free memory");
#endif
  return info;
}

size_t device_bytes_in_use() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.in_use;
}

std::string oom_message(const std::string& what, size_t bytes, DeviceMemInfo info, size_t in_use,
                        size_t estimate, const std::string& breakdown) {
  std::string m = "out of device memory allocating " + what + ": " + format_bytes(bytes) + " (" +
                  std::to_string(bytes) + " bytes) requested, " + format_bytes(info.free) + " free of " +
                  format_bytes(info.total) + " on the device; this process holds " + format_bytes(in_use) +
                  " in scmoe device buffers; ";
  if (estimate > 0) {
    m += "the start-up estimate was " + format_bytes(estimate) + " (" + std::to_string(estimate) + " bytes)";
    if (!breakdown.empty()) m += ": " + breakdown;
  } else {
    m += "no start-up estimate was recorded";
  }
  m += ". Hint: lower train.batch_size or the model size, or check that no other process holds the device.";
  return m;
}

void* device_alloc(size_t bytes, const std::string& what) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
#if defined(SCMOE_SIMT_EMU)
  // The host stands in for the device: more than its free memory is out of memory (and never reaches
  // malloc, which may overcommit or, under sanitizers, abort).
  if (bytes > device_mem_info().free) throw_oom(what, bytes);
  p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);  // cudaMalloc's alignment
  if (!p) throw_oom(what, bytes);
#else
  cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // not sticky: clear it so later checks do not report it again
    throw_oom(what, bytes);
  }
  SCMOE_CUDA_CHECK_FOR(err, what + " (" + std::to_string(bytes) + " bytes)");
#endif
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.live[p] = bytes;
  r.in_use += bytes;
  return p;
}

void device_free(void* p) {
  if (!p) return;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.live.find(p);
    SCMOE_CHECK(it != r.live.end(), "device_free of a pointer device_alloc did not return");
    r.in_use -= it->second;
    r.live.erase(it);
  }
#if defined(SCMOE_SIMT_EMU)
  std::free(p);
#else
  // Called from destructors: an error here (a fault reported late) must not throw during unwinding.
  cudaError_t err = cudaFree(p);
  if (err != cudaSuccess) std::fprintf(stderr, "warning: cudaFree failed: %s\n", cudaGetErrorString(err));
#endif
}

void* host_pinned_alloc(size_t bytes, const std::string& what) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
#if defined(SCMOE_SIMT_EMU)
  p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  SCMOE_CHECK(p, "out of host memory allocating " << what << " (" << format_bytes(bytes) << ")");
#else
  const cudaError_t err = cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
  SCMOE_CHECK(err == cudaSuccess, "cudaHostAlloc of " << format_bytes(bytes) << " of page-locked host memory for "
                                                     << what << " failed: " << cudaGetErrorString(err)
                                                     << ". The host may lack that much free RAM, or the locked-"
                                                        "memory limit (ulimit -l) is lower");
#endif
  return p;
}

void host_pinned_free(void* p) {
  if (!p) return;
#if defined(SCMOE_SIMT_EMU)
  std::free(p);
#else
  cudaError_t err = cudaFreeHost(p);
  if (err != cudaSuccess) std::fprintf(stderr, "warning: cudaFreeHost failed: %s\n", cudaGetErrorString(err));
#endif
}

void check_copy_size(const std::string& what, size_t n, size_t capacity) {
  SCMOE_CHECK(n <= capacity,
              "copy of " << n << " elements into or out of " << what << " which holds " << capacity);
}

// Copies through the runtime's calls (kernels/cuda/runtime.h): natively the CUDA runtime, emulated the
// asynchronous runtime (a copy on a stream runs in that stream's order there too).
void copy_to_device(void* dst, const void* src, size_t bytes, const char*) {
  memcpy_sync(dst, src, bytes, CopyKind::host_to_device);
}
void copy_to_host(void* dst, const void* src, size_t bytes, const char*) {
  memcpy_sync(dst, src, bytes, CopyKind::device_to_host);
}
void copy_device_to_device(void* dst, const void* src, size_t bytes, const char*) {
  memcpy_sync(dst, src, bytes, CopyKind::device_to_device);
}
void copy_to_device_async(void* dst, const void* src, size_t bytes, cudaStream_t stream, const char*) {
  memcpy_async(dst, src, bytes, CopyKind::host_to_device, stream);
}
void copy_to_host_async(void* dst, const void* src, size_t bytes, cudaStream_t stream, const char*) {
  memcpy_async(dst, src, bytes, CopyKind::device_to_host, stream);
}
void fill_zero(void* dst, size_t bytes, cudaStream_t stream, const char*) { memset_async(dst, 0, bytes, stream); }

SCMOE_CUDA_END
