// The NCCL communicator for CUDA buffers (built only with CUDA; link libnccl). Rank 0 creates the NCCL
// unique id and shares it through the rank-0 TcpStore (key "nccl_id"), like Gloo's rendezvous.
#pragma once
#include <memory>

#include "comm/communicator.h"

namespace scmoe {

// Binds this process to GPU LOCAL_RANK % device_count, then joins the NCCL communicator. `timeout_s`
// bounds the rendezvous (NCCL's own collectives have no timeout: a dead peer is ended by the
// launcher). Each collective is issued on the CUDA stream it is given (Stream::native_handle), or on
// `cuda_stream_hint` (a cudaStream_t; nullptr: the default stream) when given none, and is asynchronous
// like any CUDA work on it, except barrier(), which also waits for that stream. `bootstrap`: a host communicator of the same
// ranks (Gloo) over which rank 0's NCCL id is broadcast, for processes that hold one already (its
// store keeps the master port); nullptr: the id goes through a TcpStore on the master port.
std::unique_ptr<Communicator> make_nccl_communicator(const ProcessGroupEnv& env, double timeout_s,
                                                     void* cuda_stream_hint, Communicator* bootstrap = nullptr);

}  // namespace scmoe
