// The host-to-device link of expert offloading on a GPU (the ExpertLink of model/expert_cache.h): slots
// in device memory, copies from pinned host memory with cudaMemcpyAsync on a copy stream of their own,
// a CUDA event per slot, and waits that make the compute stream (not the host) wait for a copy. The
// time the compute stream stalls in those waits (exposed transfer) and the time copies take (link
// busy) are measured with timing events on the device and added at settle().
// Native builds only: under the SIMT emulation "device" memory is host memory and the CPU's HostLink
// (a copy thread) stands in for it.
#pragma once
#include <memory>

#include "kernels/cuda/abi.h"
#include "model/expert_cache.h"

SCMOE_CUDA_BEGIN

#if !defined(SCMOE_SIMT_EMU)
std::unique_ptr<ExpertLink> make_cuda_expert_link(cudaStream_t compute);
#endif

SCMOE_CUDA_END
