// CUDA streams and events behind core/stream.h's Stream and Event: record / wait / synchronize map to
// cudaEventRecord / cudaStreamWaitEvent / cudaStreamSynchronize, enqueue() runs a host function in
// stream order (cudaLaunchHostFunc), and native_handle() is the cudaStream_t kernels and NCCL are
// issued on. Through kernels/cuda/runtime.h, so the same code runs on the emulated asynchronous runtime.
#pragma once
#include <memory>
#include <string>

#include "core/stream.h"
#include "kernels/cuda/abi.h"

SCMOE_CUDA_BEGIN

// A non-blocking stream; high_priority: the device's greatest priority (the communication stream, so
// that an exchange's kernels are scheduled ahead of the backbone's when both are ready).
std::unique_ptr<Stream> make_stream(const std::string& name, bool high_priority = false);
// timing: usable with Event::elapsed_ms (cudaEventElapsedTime); otherwise an ordering-only event.
std::unique_ptr<Event> make_event(bool timing = false);

SCMOE_CUDA_END
