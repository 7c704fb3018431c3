// The communicator interface the trainer uses for data and expert parallelism: all_reduce (sum),
// all_to_all with equal or variable splits, all_gather, broadcast and barrier. Each call is enqueued on
// a stream (nullptr: run now on the calling thread), so the overlap schedule can put collectives on a
// communication stream. Gloo implements it for CPU tensors, NCCL for CUDA tensors.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/stream.h"

namespace scmoe {

enum class DType { f32, f64, i32, i64, u8 };
size_t dtype_size(DType t);

struct SimulatedLink {
  double bandwidth_gb_s = 0;  // 0: off
  double latency_us = 0;
  bool enabled() const { return bandwidth_gb_s > 0 || latency_us > 0; }
};

// Every rank must issue the same collectives in the same order (any streams included). Work enqueued
// on a stream refers to the communicator and to the caller's buffers: synchronize the stream before
// either goes away. Errors (a dead peer, a timeout) surface as scmoe::Error naming the collective, at
// the call (s == nullptr) or at the stream's next synchronize().
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual std::string backend() const = 0;  // "gloo" | "nccl" | "single"
  // True when collectives given a stream are issued on that (device) stream, as NCCL does; false when
  // they run as host work, in its order or now, as Gloo and shared memory do (on host memory, or on
  // an emulated device's).
  virtual bool issues_on_device() const { return false; }

  // In-place elementwise sum over ranks of `count` elements.
  virtual void all_reduce_sum(void* buf, size_t count, DType t, Stream* s) = 0;
  // Equal splits: send[r*count .. (r+1)*count) goes to rank r; recv[r*count ..) comes from rank r.
  virtual void all_to_all(const void* send, void* recv, size_t count_per_rank, DType t, Stream* s) = 0;
  // Variable splits (element counts and offsets per peer, in elements). Zero-size splits allowed.
  virtual void all_to_all_v(const void* send, const std::vector<size_t>& send_counts,
                            const std::vector<size_t>& send_offsets, void* recv,
                            const std::vector<size_t>& recv_counts, const std::vector<size_t>& recv_offsets,
                            DType t, Stream* s) = 0;
  // recv holds world_size * count elements, rank r's contribution at r*count.
  virtual void all_gather(const void* send, void* recv, size_t count, DType t, Stream* s) = 0;
  virtual void broadcast(void* buf, size_t count, DType t, int root, Stream* s) = 0;
  virtual void barrier(Stream* s) = 0;

  // Host time (Tracer::now_us clock: steady, the same for every process on a host) at which every rank
  // had entered the last all_to_all / all_to_all_v this process completed; what came before it was
  // waiting for a slower peer, not moving data. Negative when the transport cannot tell (Gloo: see
  // comm.measure_peer_wait). Read it on the thread that ran the exchange, before it issues another.
  virtual double last_all_arrived_us() const { return -1; }

  // Every all_to_all / all_to_all_v is followed by a sleep of latency + bytes_sent / bandwidth, as a
  // link of that speed would add (results are labelled "simulated" by the caller).
  void set_simulated_link(const SimulatedLink& l) { link_ = l; }
  const SimulatedLink& simulated_link() const { return link_; }

 protected:
  void simulate_link_delay(size_t bytes_sent) const;
  // "all_to_all_v on rank 1 of 4": how every backend's errors name the failed collective.
  std::string where(const char* op) const;
  // Validates all_to_all_v's split vectors (one entry per rank; what this rank sends itself equals
  // what it receives from itself), with errors naming the offending vector.
  void check_v_splits(const std::vector<size_t>& send_counts, const std::vector<size_t>& send_offsets,
                      const std::vector<size_t>& recv_counts, const std::vector<size_t>& recv_offsets) const;
  SimulatedLink link_;
};

// Where this process sits: from RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE/MASTER_ADDR/MASTER_PORT
// (set by train/launch), else from Slurm's SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID and
// SLURM_NTASKS_PER_NODE or SLURM_TASKS_PER_NODE, else a single process (rank 0 of 1). MASTER_ADDR
// must be set when the job spans nodes (deriving it from SLURM_JOB_NODELIST is not attempted); on one
// node it defaults to 127.0.0.1, MASTER_PORT to 29500. Invalid values throw scmoe::Error naming the
// variable.
struct ProcessGroupEnv {
  int rank = 0, world_size = 1, local_rank = 0, local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string source = "single process";  // "launcher env" | "slurm" | "single process"
};
ProcessGroupEnv read_process_group_env();

// A communicator for world_size == 1 (every collective is a copy or a no-op).
std::unique_ptr<Communicator> make_single_process_communicator();

// Gloo over TCP, bootstrapped through the rank-0 key-value store at master_addr:master_port.
// `timeout_s` bounds the rendezvous and every collective (a dead peer becomes an error, not a hang).
std::unique_ptr<Communicator> make_gloo_communicator(const ProcessGroupEnv& env, double timeout_s);

// all_to_all and all_to_all_v over a shared-memory segment (comm/shm_communicator.cpp: one copy in, one
// copy out, a futex wake-up per peer), every other collective through `base`; for jobs whose ranks all
// run on this host. Collective over the ranks of `base`. On success it takes `base` over; on failure
// (no /dev/shm, not enough room in it, a rank on another host) every rank throws scmoe::Error and
// `base` stays usable. backend() is base's plus "+shm".
std::unique_ptr<Communicator> make_shm_communicator(std::unique_ptr<Communicator>& base, double timeout_s);

}  // namespace scmoe
