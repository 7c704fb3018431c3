// The NCCL communicator: collectives on CUDA buffers, bootstrapped through the rank-0 TcpStore.
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "comm/nccl_communicator.h"
#include "comm/store.h"
#include "core/check.h"

// Every CUDA and NCCL call goes through these, so a failure names the call and its file:line.
#define SCMOE_CUDA_CHECK(call) ::scmoe::check_cuda((call), #call, __FILE__, __LINE__)
#define SCMOE_NCCL_CHECK(call) check_nccl((call), #call, __FILE__, __LINE__)

namespace scmoe {
namespace {

void check_cuda(cudaError_t err, const char* call, const char* file, int line) {
  if (err == cudaSuccess) return;
  fail_at(file, line, std::string(call) + " failed: " + cudaGetErrorString(err));
}

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f32:
      return ncclFloat32;
    case DType::f64:
      return ncclFloat64;
    case DType::i32:
      return ncclInt32;
    case DType::i64:
      return ncclInt64;
    case DType::u8:
      return ncclUint8;
  }
  SCMOE_FAIL("unknown DType " << static_cast<int>(t));
}

const char* byte_at(const void* p, size_t bytes) { return static_cast<const char*>(p) + bytes; }
char* byte_at(void* p, size_t bytes) { return static_cast<char*>(p) + bytes; }

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(const ProcessGroupEnv& env, double timeout_s, void* stream_hint, Communicator* bootstrap)
      : rank_(env.rank), world_(env.world_size), stream_(static_cast<cudaStream_t>(stream_hint)) {
    SCMOE_CHECK(timeout_s > 0, "nccl communicator: the timeout must be positive (got " << timeout_s << " s)");
    select_device(env);
    ncclUniqueId id;
    if (bootstrap) {  // rank 0's id over the host communicator (its store already holds the master port)
      SCMOE_CHECK(bootstrap->world_size() == world_ && bootstrap->rank() == rank_,
                  "nccl: the bootstrap communicator is rank " << bootstrap->rank() << " of " << bootstrap->world_size()
                                                              << ", this process is rank " << rank_ << " of " << world_);
      if (rank_ == 0) SCMOE_NCCL_CHECK(ncclGetUniqueId(&id));
      bootstrap->broadcast(id.internal, sizeof id.internal, DType::u8, 0, nullptr);
    } else {
      id = share_unique_id(env, std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
    }
    SCMOE_NCCL_CHECK(ncclCommInitRank(&comm_, world_, id, rank_));
    SCMOE_CUDA_CHECK(cudaMalloc(&barrier_buf_, sizeof(float)));
    SCMOE_CUDA_CHECK(cudaMemset(barrier_buf_, 0, sizeof(float)));
  }

  ~NcclCommunicator() override {
    if (barrier_buf_) cudaFree(barrier_buf_);
    if (!comm_) return;
    // While an error unwinds, peers may be gone: abort instead of waiting for their operations.
    if (std::uncaught_exceptions() > 0) {
      ncclCommAbort(comm_);
    } else {
      cudaStreamSynchronize(stream_);  // queued simulated-link callbacks still refer to this object
      ncclCommDestroy(comm_);
    }
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string backend() const override { return "nccl"; }
  bool issues_on_device() const override { return true; }

  void all_reduce_sum(void* buf, size_t count, DType t, Stream* s) override {
    if (count == 0) return;
    SCMOE_NCCL_CHECK(ncclAllReduce(buf, buf, count, nccl_type(t), ncclSum, comm_, on(s)));
  }

  void all_to_all(const void* send, void* recv, size_t count_per_rank, DType t, Stream* s) override {
    if (count_per_rank == 0) return;
    const size_t chunk = count_per_rank * dtype_size(t);
    SCMOE_NCCL_CHECK(ncclGroupStart());
    for (int p = 0; p < world_; ++p) {
      SCMOE_NCCL_CHECK(ncclSend(byte_at(send, p * chunk), count_per_rank, nccl_type(t), p, comm_, on(s)));
      SCMOE_NCCL_CHECK(ncclRecv(byte_at(recv, p * chunk), count_per_rank, nccl_type(t), p, comm_, on(s)));
    }
    SCMOE_NCCL_CHECK(ncclGroupEnd());
    delay_stream(chunk * static_cast<size_t>(world_ - 1), on(s));
  }

  void all_to_all_v(const void* send, const std::vector<size_t>& send_counts,
                    const std::vector<size_t>& send_offsets, void* recv,
                    const std::vector<size_t>& recv_counts, const std::vector<size_t>& recv_offsets, DType t,
                    Stream* s) override {
    check_v_splits(send_counts, send_offsets, recv_counts, recv_offsets);
    const size_t es = dtype_size(t);
    size_t sent_to_peers = 0;
    // Empty splits are skipped on both sides: the sender's count for p is p's count from the sender.
    SCMOE_NCCL_CHECK(ncclGroupStart());
    for (int p = 0; p < world_; ++p) {
      if (send_counts[p] > 0)
        SCMOE_NCCL_CHECK(
            ncclSend(byte_at(send, send_offsets[p] * es), send_counts[p], nccl_type(t), p, comm_, on(s)));
      if (recv_counts[p] > 0)
        SCMOE_NCCL_CHECK(
            ncclRecv(byte_at(recv, recv_offsets[p] * es), recv_counts[p], nccl_type(t), p, comm_, on(s)));
      if (p != rank_) sent_to_peers += send_counts[p] * es;
    }
    SCMOE_NCCL_CHECK(ncclGroupEnd());
    delay_stream(sent_to_peers, on(s));
  }

  void all_gather(const void* send, void* recv, size_t count, DType t, Stream* s) override {
    if (count == 0) return;
    SCMOE_NCCL_CHECK(ncclAllGather(send, recv, count, nccl_type(t), comm_, on(s)));
  }

  void broadcast(void* buf, size_t count, DType t, int root, Stream* s) override {
    SCMOE_CHECK(root >= 0 && root < world_, where("broadcast") << ": root " << root << " does not exist");
    if (count == 0) return;
    SCMOE_NCCL_CHECK(ncclBroadcast(buf, buf, count, nccl_type(t), root, comm_, on(s)));
  }

  // NCCL has no barrier: a one-element all-reduce, then the host waits for it like Gloo's barrier.
  void barrier(Stream* s) override {
    SCMOE_NCCL_CHECK(ncclAllReduce(barrier_buf_, barrier_buf_, 1, ncclFloat32, ncclSum, comm_, on(s)));
    SCMOE_CUDA_CHECK(cudaStreamSynchronize(on(s)));
  }

 private:
  // The stream a collective is issued on: the caller's (a CUDA stream), else the hint.
  cudaStream_t on(Stream* s) const { return s ? static_cast<cudaStream_t>(s->native_handle()) : stream_; }

  void select_device(const ProcessGroupEnv& env) {
    int devices = 0;
    SCMOE_CUDA_CHECK(cudaGetDeviceCount(&devices));
    // NCCL refuses two ranks on one GPU, so say so before it does, in our terms.
    SCMOE_CHECK(env.local_world_size <= devices, "nccl: " << env.local_world_size
                                                          << " ranks on this node but only " << devices
                                                          << " CUDA device(s)");
    SCMOE_CUDA_CHECK(cudaSetDevice(env.local_rank % devices));
  }

  // Rank 0 makes the id; everybody else reads it from the store. The store only lives for this
  // exchange (rank 0's copy lingers until the others have read it).
  ncclUniqueId share_unique_id(const ProcessGroupEnv& env, std::chrono::milliseconds timeout) {
    TcpStore store(env.master_addr, env.master_port, rank_ == 0, timeout);
    store.check_in(rank_, world_);
    ncclUniqueId id;
    if (rank_ == 0) {
      SCMOE_NCCL_CHECK(ncclGetUniqueId(&id));
      store.set("nccl_id", std::vector<char>(id.internal, id.internal + sizeof id.internal));
    } else {
      std::vector<char> bytes = store.get("nccl_id");
      SCMOE_CHECK(bytes.size() == sizeof id.internal, "nccl: the store's nccl_id has " << bytes.size()
                                                                                       << " bytes, expected "
                                                                                       << sizeof id.internal);
      std::memcpy(id.internal, bytes.data(), bytes.size());
    }
    return id;
  }

  // The simulated link holds the stream, not the host: a host callback queued after the exchange
  // sleeps as long as the link would take.
  struct Delay {
    const NcclCommunicator* self;
    size_t bytes;
  };
  static void CUDART_CB run_delay(void* arg) {
    std::unique_ptr<Delay> d(static_cast<Delay*>(arg));
    d->self->simulate_link_delay(d->bytes);
  }
  void delay_stream(size_t bytes, cudaStream_t stream) {
    if (!link_.enabled()) return;
    auto d = std::make_unique<Delay>(Delay{this, bytes});
    SCMOE_CUDA_CHECK(cudaLaunchHostFunc(stream, run_delay, d.get()));
    d.release();  // owned by the callback now
  }

  void check_nccl(ncclResult_t r, const char* call, const char* file, int line) const {
    if (r == ncclSuccess) return;
    std::string detail = comm_ ? ncclGetLastError(comm_) : "";
    fail_at(file, line,
            "NCCL on rank " + std::to_string(rank_) + " of " + std::to_string(world_) + ": " + call +
                " failed: " + ncclGetErrorString(r) + (detail.empty() ? "" : " (" + detail + ")"));
  }

  int rank_, world_;
  cudaStream_t stream_;
  ncclComm_t comm_ = nullptr;
  float* barrier_buf_ = nullptr;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const ProcessGroupEnv& env, double timeout_s,
                                                     void* cuda_stream_hint, Communicator* bootstrap) {
  return std::make_unique<NcclCommunicator>(env, timeout_s, cuda_stream_hint, bootstrap);
}

}  // namespace scmoe
