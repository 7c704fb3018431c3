// Device memory for the CUDA backend (docs/design.md section 2): the few big allocations (parameters,
// gradients, optimizer state, the activation arena) made once at start-up, each named, so that running
// out of memory says what was being allocated, how much, what the device had and what was estimated.
// Checked copies. In the emulated build (SCMOE_SIMT_EMU) "device" memory is host memory and the
// device is as large as the host's physical memory.
#pragma once
#include <cstddef>
#include <string>
#include <utility>

#include "kernels/cuda/abi.h"

SCMOE_CUDA_BEGIN

// "1.50 GiB" (B, KiB, MiB, GiB, TiB; two decimals above bytes).
std::string format_bytes(size_t bytes);

// Records the start-up estimate (the figure printed at start) for later out-of-memory messages;
// `breakdown` says what it is made of ("params 1.2 GiB, grads 1.2 GiB, arena 3.0 GiB").
void set_memory_estimate(size_t bytes, const std::string& breakdown);

struct DeviceMemInfo {
  size_t free = 0, total = 0;
};
DeviceMemInfo device_mem_info();

// Bytes currently held through device_alloc (not yet device_free'd).
size_t device_bytes_in_use();

// The message of a failed allocation (exposed for tests): what, bytes asked, free/total on the device,
// bytes this process holds through device_alloc, the start-up estimate (estimate 0: none recorded).
std::string oom_message(const std::string& what, size_t bytes, DeviceMemInfo info, size_t in_use,
                        size_t estimate, const std::string& breakdown);

// cudaMalloc with an error (scmoe::Error, from oom_message) naming `what`; 0 bytes gives nullptr.
void* device_alloc(size_t bytes, const std::string& what);
void device_free(void* p);  // nullptr is fine

// Page-locked host memory (cudaHostAlloc), so that copies from it run asynchronously at the link's full
// rate (expert offloading keeps the routed experts there); the error names `what`. Emulated: plain
// host memory, 256-byte aligned.
void* host_pinned_alloc(size_t bytes, const std::string& what);
void host_pinned_free(void* p);  // nullptr is fine

// Checked copies (what: a name for the error message). The synchronous ones return when the copy is
// done; the async ones are ordered on `stream` (host memory should be pinned for real overlap).
void copy_to_device(void* dst, const void* src, size_t bytes, const char* what);
void copy_to_host(void* dst, const void* src, size_t bytes, const char* what);
void copy_device_to_device(void* dst, const void* src, size_t bytes, const char* what);
void copy_to_device_async(void* dst, const void* src, size_t bytes, cudaStream_t stream, const char* what);
void copy_to_host_async(void* dst, const void* src, size_t bytes, cudaStream_t stream, const char* what);
void fill_zero(void* dst, size_t bytes, cudaStream_t stream, const char* what);

// An owning, named device array of n T's (freed on destruction; movable, not copyable).
template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(size_t n, const std::string& what)
      : p_(static_cast<T*>(device_alloc(n * sizeof(T), what))), n_(n), what_(what) {}
  DeviceArray(DeviceArray&& o) noexcept { swap(o); }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    DeviceArray(std::move(o)).swap(*this);
    return *this;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { device_free(p_); }

  T* get() const { return p_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }
  const std::string& name() const { return what_; }
  void upload(const T* host, size_t n) { copy_to_device(p_, host, checked(n) * sizeof(T), what_.c_str()); }
  void download(T* host, size_t n) const { copy_to_host(host, p_, checked(n) * sizeof(T), what_.c_str()); }
  void swap(DeviceArray& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    what_.swap(o.what_);
  }

 private:
  size_t checked(size_t n) const;
  T* p_ = nullptr;
  size_t n_ = 0;
  std::string what_;
};

// Throws scmoe::Error when a copy of n elements would overrun the array.
void check_copy_size(const std::string& what, size_t n, size_t capacity);
template <class T>
size_t DeviceArray<T>::checked(size_t n) const {
  check_copy_size(what_, n, n_);
  return n;
}

SCMOE_CUDA_END
