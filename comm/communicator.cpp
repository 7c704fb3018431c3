// What every communicator shares: dtype sizes, the simulated link, split validation, the process-group
// environment (launcher or Slurm) and the single-process communicator.
#include "comm/communicator.h"

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "core/check.h"

namespace scmoe {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32:
    case DType::i32:
      return 4;
    case DType::f64:
    case DType::i64:
      return 8;
    case DType::u8:
      return 1;
  }
  SCMOE_FAIL("dtype_size: unknown DType " << static_cast<int>(t));
}

void Communicator::simulate_link_delay(size_t bytes_sent) const {
  if (!link_.enabled()) return;
  double seconds = link_.latency_us * 1e-6;
  if (link_.bandwidth_gb_s > 0) seconds += static_cast<double>(bytes_sent) / (link_.bandwidth_gb_s * 1e9);
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

std::string Communicator::where(const char* op) const {
  return std::string(op) + " on rank " + std::to_string(rank()) + " of " + std::to_string(world_size());
}

void Communicator::check_v_splits(const std::vector<size_t>& send_counts,
                                  const std::vector<size_t>& send_offsets,
                                  const std::vector<size_t>& recv_counts,
                                  const std::vector<size_t>& recv_offsets) const {
  const size_t w = static_cast<size_t>(world_size());
  auto check_len = [&](const std::vector<size_t>& v, const char* name) {
    SCMOE_CHECK(v.size() == w, where("all_to_all_v") << ": " << name << " has " << v.size()
                                                     << " entries, expected one per rank (" << w << ")");
  };
  check_len(send_counts, "send_counts");
  check_len(send_offsets, "send_offsets");
  check_len(recv_counts, "recv_counts");
  check_len(recv_offsets, "recv_offsets");
  const size_t me = static_cast<size_t>(rank());
  SCMOE_CHECK(send_counts[me] == recv_counts[me], where("all_to_all_v")
                                                      << ": sends itself " << send_counts[me]
                                                      << " elements but expects to receive "
                                                      << recv_counts[me] << " from itself");
}

// ---- process-group environment -------------------------------------------------------------------

namespace {

const char* env_value(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

int parse_int(const char* name, const char* text) {
  errno = 0;
  char* end = nullptr;
  long v = std::strtol(text, &end, 10);
  SCMOE_CHECK(errno == 0 && end != text && *end == '\0' && v >= INT32_MIN && v <= INT32_MAX,
              "environment variable " << name << "='" << text << "' is not an integer");
  return static_cast<int>(v);
}

int required_int(const char* name, const char* source) {
  const char* v = env_value(name);
  SCMOE_CHECK(v, name << " is not set (" << source << " environment needs it)");
  return parse_int(name, v);
}

int int_or(const char* name, int fallback) {
  const char* v = env_value(name);
  return v ? parse_int(name, v) : fallback;
}

// SLURM_TASKS_PER_NODE looks like "2(x3),1": 2 tasks on each of 3 nodes, then 1. Returns node_id's.
int tasks_on_node(const std::string& spec, int node_id) {
  const char* p = spec.c_str();
  int node = 0;
  while (*p) {
    char* end = nullptr;
    long tasks = std::strtol(p, &end, 10);
    SCMOE_CHECK(end != p, "cannot parse SLURM_TASKS_PER_NODE='" << spec << "'");
    long repeat = 1;
    if (std::strncmp(end, "(x", 2) == 0) {
      repeat = std::strtol(end + 2, &end, 10);
      SCMOE_CHECK(*end == ')', "cannot parse SLURM_TASKS_PER_NODE='" << spec << "'");
      ++end;
    }
    if (node_id < node + repeat) return static_cast<int>(tasks);
    node += static_cast<int>(repeat);
    p = *end == ',' ? end + 1 : end;
  }
  SCMOE_FAIL("SLURM_TASKS_PER_NODE='" << spec << "' lists no entry for node " << node_id
                                      << " (SLURM_NODEID)");
}

ProcessGroupEnv from_launcher_env() {
  ProcessGroupEnv e;
  e.source = "launcher env";
  e.rank = required_int("RANK", "the launcher");
  e.world_size = required_int("WORLD_SIZE", "the launcher");
  // Without LOCAL_* (a hand-started single node) every rank is local.
  e.local_rank = int_or("LOCAL_RANK", e.rank);
  e.local_world_size = int_or("LOCAL_WORLD_SIZE", e.world_size);
  return e;
}

ProcessGroupEnv from_slurm_env() {
  ProcessGroupEnv e;
  e.source = "slurm";
  e.rank = required_int("SLURM_PROCID", "the Slurm");
  e.world_size = required_int("SLURM_NTASKS", "the Slurm");
  e.local_rank = required_int("SLURM_LOCALID", "the Slurm");
  if (const char* per_node = env_value("SLURM_NTASKS_PER_NODE")) {
    e.local_world_size = parse_int("SLURM_NTASKS_PER_NODE", per_node);
  } else if (const char* spec = env_value("SLURM_TASKS_PER_NODE")) {
    e.local_world_size = tasks_on_node(spec, int_or("SLURM_NODEID", 0));
  } else {
    e.local_world_size = e.world_size;
  }
  return e;
}

// MASTER_ADDR/MASTER_PORT: required across nodes; one node may fall back to loopback:29500.
void read_master(ProcessGroupEnv* e) {
  const char* addr = env_value("MASTER_ADDR");
  bool one_node = e->local_world_size == e->world_size;
  SCMOE_CHECK(addr || one_node, "MASTER_ADDR is not set: a job over several nodes ("
                                    << e->source << ", world size " << e->world_size << ", "
                                    << e->local_world_size
                                    << " per node) needs the address of rank 0's host");
  if (addr) e->master_addr = addr;
  e->master_port = int_or("MASTER_PORT", e->master_port);
}

void validate(const ProcessGroupEnv& e) {
  const bool slurm = e.source == "slurm";
  const char* rank = slurm ? "SLURM_PROCID" : "RANK";
  const char* world = slurm ? "SLURM_NTASKS" : "WORLD_SIZE";
  const char* local_rank = slurm ? "SLURM_LOCALID" : "LOCAL_RANK";
  const char* local_world = slurm ? "SLURM_NTASKS_PER_NODE/SLURM_TASKS_PER_NODE" : "LOCAL_WORLD_SIZE";
  SCMOE_CHECK(e.world_size >= 1, world << "=" << e.world_size << " must be at least 1");
  SCMOE_CHECK(e.rank >= 0 && e.rank < e.world_size,
              rank << "=" << e.rank << " must be in [0, " << world << "=" << e.world_size << ")");
  SCMOE_CHECK(
      e.local_world_size >= 1 && e.local_world_size <= e.world_size,
      local_world << "=" << e.local_world_size << " must be in [1, " << world << "=" << e.world_size << "]");
  SCMOE_CHECK(e.local_rank >= 0 && e.local_rank < e.local_world_size,
              local_rank << "=" << e.local_rank << " must be in [0, " << local_world << "="
                         << e.local_world_size << ")");
  SCMOE_CHECK(e.master_port >= 1 && e.master_port <= 65535,
              "MASTER_PORT=" << e.master_port << " must be in [1, 65535]");
}

}  // namespace

ProcessGroupEnv read_process_group_env() {
  ProcessGroupEnv e;
  if (env_value("RANK") || env_value("WORLD_SIZE")) {
    e = from_launcher_env();
  } else if (env_value("SLURM_PROCID")) {
    e = from_slurm_env();
  } else {
    return e;  // a single process
  }
  read_master(&e);
  validate(e);
  return e;
}

// ---- world_size == 1 ----------------------------------------------------------------------------

namespace {

void run_on(Stream* s, std::function<void()> fn) {
  if (s)
    s->enqueue(std::move(fn));
  else
    fn();
}

// Every collective of one rank is a copy (or nothing); there is no link to simulate.
class SingleProcessCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  std::string backend() const override { return "single"; }

  void all_reduce_sum(void*, size_t, DType, Stream*) override {}

  void all_to_all(const void* send, void* recv, size_t count_per_rank, DType t, Stream* s) override {
    copy(send, recv, count_per_rank * dtype_size(t), s);
  }

  void all_to_all_v(const void* send, const std::vector<size_t>& send_counts,
                    const std::vector<size_t>& send_offsets, void* recv,
                    const std::vector<size_t>& recv_counts, const std::vector<size_t>& recv_offsets, DType t,
                    Stream* s) override {
    check_v_splits(send_counts, send_offsets, recv_counts, recv_offsets);
    const size_t es = dtype_size(t);
    copy(static_cast<const char*>(send) + send_offsets[0] * es,
         static_cast<char*>(recv) + recv_offsets[0] * es, send_counts[0] * es, s);
  }

  void all_gather(const void* send, void* recv, size_t count, DType t, Stream* s) override {
    copy(send, recv, count * dtype_size(t), s);
  }

  void broadcast(void*, size_t, DType, int root, Stream*) override {
    SCMOE_CHECK(root == 0, where("broadcast") << ": root " << root << " does not exist");
  }

  void barrier(Stream*) override {}

 private:
  static void copy(const void* from, void* to, size_t bytes, Stream* s) {
    if (bytes == 0 || from == to) return;
    run_on(s, [=] { std::memmove(to, from, bytes); });
  }
};

}  // namespace

std::unique_ptr<Communicator> make_single_process_communicator() {
  return std::make_unique<SingleProcessCommunicator>();
}

}  // namespace scmoe
