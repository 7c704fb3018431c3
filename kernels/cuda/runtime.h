// The CUDA runtime calls the CUDA backend makes (streams, events, copies, allocation), behind names of
// our own so that the same backend code runs on two runtimes:
//   natively   the CUDA runtime (kernels/cuda/runtime.cu), every call checked (file:line, the call, a
//              hint);
//   emulated   (SCMOE_SIMT_EMU) an asynchronous runtime of our own (kernels/cuda/emu/async_runtime.h): each
//              stream is a worker thread with a queue, kernels run on their stream's thread, events and
//              stream_wait_event are real, copies are asynchronous, and a seeded random delay before each
//              piece of stream work makes a missing wait produce a wrong result, in CI, without a GPU.
// Host-blocking calls (stream / event / device synchronisation, synchronous copies) are counted in
// both, so a test can assert that no host synchronisation sits inside an overlap window.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/abi.h"

struct CUevent_st;

SCMOE_CUDA_BEGIN

using event_t = CUevent_st*;
enum class CopyKind { host_to_device, device_to_host, device_to_device };

// A non-blocking stream; high_priority: the device's greatest priority (communication streams).
cudaStream_t stream_create(bool high_priority);
void stream_destroy(cudaStream_t s);
void stream_synchronize(cudaStream_t s);  // host-blocking
void stream_wait_event(cudaStream_t s, event_t e);
// timing: the event can be used with event_elapsed_ms (else cheaper, order only).
event_t event_create(bool timing);
void event_destroy(event_t e);
void event_record(event_t e, cudaStream_t s);
bool event_query(event_t e);
void event_synchronize(event_t e);  // host-blocking
float event_elapsed_ms(event_t start, event_t end);
void device_synchronize();  // host-blocking
// In s's order. Host-to-device from pageable memory reads the source during the call (as CUDA stages
// it), so the caller may reuse it at once.
void memcpy_async(void* dst, const void* src, size_t bytes, CopyKind kind, cudaStream_t s);
void memset_async(void* dst, int value, size_t bytes, cudaStream_t s);
// A synchronous copy on the legacy default stream (host-blocking; it does not wait for non-blocking
// streams: synchronise them first).
void memcpy_sync(void* dst, const void* src, size_t bytes, CopyKind kind);
// fn(data) on the host in s's order (it must not call the runtime).
void launch_host_func(cudaStream_t s, void (*fn)(void*), void* data);

// Host-blocking calls made so far by this process (any thread).
int64_t host_blocking_calls();

SCMOE_CUDA_END
