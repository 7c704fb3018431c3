// The runtime calls of the CUDA backend (see runtime.h): the CUDA runtime natively, the asynchronous
// emulated runtime under the SIMT emulation.
#include "kernels/cuda/runtime.h"

#include <atomic>

#if defined(SCMOE_SIMT_EMU)
#include "kernels/cuda/emu/async_runtime.h"
#else
#include <cuda_runtime.h>

#include "core/check.h"
#endif

SCMOE_CUDA_BEGIN

namespace {
std::atomic<int64_t> g_blocking{0};
void count_blocking() { g_blocking.fetch_add(1, std::memory_order_relaxed); }
}  // namespace

int64_t host_blocking_calls() { return g_blocking.load(std::memory_order_relaxed); }

#if defined(SCMOE_SIMT_EMU)

namespace rt = ::simt::rt;
cudaStream_t stream_create(bool high_priority) { return rt::stream_create(high_priority); }
void stream_destroy(cudaStream_t s) { rt::stream_destroy(s); }
void stream_synchronize(cudaStream_t s) {
  count_blocking();
  rt::stream_synchronize(s);
}
void stream_wait_event(cudaStream_t s, event_t e) { rt::stream_wait_event(s, e); }
event_t event_create(bool timing) { return rt::event_create(timing); }
void event_destroy(event_t e) { rt::event_destroy(e); }
void event_record(event_t e, cudaStream_t s) { rt::event_record(e, s); }
bool event_query(event_t e) { return rt::event_query(e); }
void event_synchronize(event_t e) {
  count_blocking();
  rt::event_synchronize(e);
}
float event_elapsed_ms(event_t start, event_t end) { return rt::event_elapsed_ms(start, end); }
void device_synchronize() {
  count_blocking();
  rt::device_synchronize();
}
void memcpy_async(void* dst, const void* src, size_t bytes, CopyKind kind, cudaStream_t s) {
  rt::memcpy_async(dst, src, bytes, kind == CopyKind::host_to_device, s);
}
void memset_async(void* dst, int value, size_t bytes, cudaStream_t s) { rt::memset_async(dst, value, bytes, s); }
void memcpy_sync(void* dst, const void* src, size_t bytes, CopyKind) {
  count_blocking();
  rt::memcpy_sync(dst, src, bytes);
}
void launch_host_func(cudaStream_t s, void (*fn)(void*), void* data) { rt::launch_host_func(s, fn, data); }

#else

namespace {
// Every runtime call: the call, CUDA's text, and that a fault in an earlier kernel also surfaces here.
#define SCMOE_RT_CHECK(call)                                                                                  \
  do {                                                                                                        \
    const cudaError_t err_ = (call);                                                                          \
    SCMOE_CHECK(err_ == cudaSuccess, #call << " failed: " << cudaGetErrorString(err_)                         \
                                           << " (a fault in an earlier kernel also surfaces here; run under " \
                                              "compute-sanitizer to find it)");                               \
  } while (0)

cudaMemcpyKind kind_of(CopyKind k) {
  switch (k) {
    case CopyKind::host_to_device: return cudaMemcpyHostToDevice;
    case CopyKind::device_to_host: return cudaMemcpyDeviceToHost;
    case CopyKind::device_to_device: return cudaMemcpyDeviceToDevice;
  }
  return cudaMemcpyDefault;
}
}  // namespace

cudaStream_t stream_create(bool high_priority) {
  int least = 0, greatest = 0;
  SCMOE_RT_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  cudaStream_t s{};
  SCMOE_RT_CHECK(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, high_priority ? greatest : least));
  return s;
}
void stream_destroy(cudaStream_t s) { cudaStreamDestroy(s); }  // from destructors: nothing to throw
void stream_synchronize(cudaStream_t s) {
  count_blocking();
  SCMOE_RT_CHECK(cudaStreamSynchronize(s));
}
void stream_wait_event(cudaStream_t s, event_t e) { SCMOE_RT_CHECK(cudaStreamWaitEvent(s, e, 0)); }
event_t event_create(bool timing) {
  cudaEvent_t e{};
  SCMOE_RT_CHECK(cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming));
  return e;
}
void event_destroy(event_t e) { cudaEventDestroy(e); }
void event_record(event_t e, cudaStream_t s) { SCMOE_RT_CHECK(cudaEventRecord(e, s)); }
bool event_query(event_t e) {
  const cudaError_t r = cudaEventQuery(e);
  if (r == cudaErrorNotReady) return false;
  SCMOE_RT_CHECK(r);
  return true;
}
void event_synchronize(event_t e) {
  count_blocking();
  SCMOE_RT_CHECK(cudaEventSynchronize(e));
}
float event_elapsed_ms(event_t start, event_t end) {
  float ms = 0;
  SCMOE_RT_CHECK(cudaEventElapsedTime(&ms, start, end));
  return ms;
}
void device_synchronize() {
  count_blocking();
  SCMOE_RT_CHECK(cudaDeviceSynchronize());
}
void memcpy_async(void* dst, const void* src, size_t bytes, CopyKind kind, cudaStream_t s) {
  if (bytes) SCMOE_RT_CHECK(cudaMemcpyAsync(dst, src, bytes, kind_of(kind), s));
}
void memset_async(void* dst, int value, size_t bytes, cudaStream_t s) {
  if (bytes) SCMOE_RT_CHECK(cudaMemsetAsync(dst, value, bytes, s));
}
void memcpy_sync(void* dst, const void* src, size_t bytes, CopyKind kind) {
  count_blocking();
  if (bytes) SCMOE_RT_CHECK(cudaMemcpy(dst, src, bytes, kind_of(kind)));
}
void launch_host_func(cudaStream_t s, void (*fn)(void*), void* data) {
  SCMOE_RT_CHECK(cudaLaunchHostFunc(s, fn, data));
}

#endif

SCMOE_CUDA_END
