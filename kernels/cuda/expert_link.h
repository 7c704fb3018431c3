// The host-to-device link of expert offloading on a GPU (core/expert_link.h): slots
// in device memory, copies from pinned host memory with cudaMemcpyAsync on a copy stream of their own,
// a CUDA event per slot, and waits that make the compute stream (not the host) wait for a copy. The
// time the compute stream stalls in those waits (exposed transfer) and the time copies take (link
// busy) are measured with timing events on the device and added at settle().
// Through kernels/cuda/runtime.h, so it runs on the emulated asynchronous runtime too (a copy stream
// there is a thread: a copy that skipped its wait for the compute stream would overwrite a slot still
// being read, and the tests would see it).
#pragma once
#include <memory>

#include "core/expert_link.h"
#include "kernels/cuda/abi.h"

SCMOE_CUDA_BEGIN

std::unique_ptr<ExpertLink> make_cuda_expert_link(cudaStream_t compute);

SCMOE_CUDA_END
