// The MoE All-to-Alls over one shared-memory segment when every rank runs on this host; every other
// collective goes to the wrapped communicator (Gloo).
//
// Why: over Gloo's TCP loopback a 256 KiB exchange is cut into socket-buffer sized pieces, each a
// wake-up of the peer's event-loop thread and then of its caller. On a host where every core is busy
// computing (the ScMoE overlap runs compute and communication threads side by side) each of those
// wake-ups waits for a core, and the exchange takes milliseconds. Here an exchange is one copy in by
// the sender, one copy out by the receiver and one futex wake-up per peer.
//
// Layout: a header, one doorbell per rank, and one channel per ordered pair (src -> dst) holding a
// control block and a slot of `slot_bytes`. A channel is single-producer single-consumer: the sender
// fills the slot when the receiver has acknowledged every piece before (ack == seq), publishes it
// (seq + 1, release) and rings the receiver's doorbell; the receiver copies it out, acknowledges
// (ack + 1) and rings the sender's. Messages larger than the slot travel in pieces. A rank with nothing
// to do sleeps on its doorbell (an event count: it reads the doorbell before looking at its channels,
// so a ring in between makes the sleep return at once).
#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstring>
#include <ctime>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/check.h"
#include "core/trace.h"

namespace scmoe {
namespace {

constexpr uint32_t kMagic = 0x5c30e5a2;

// Shared words are plain integers accessed with the compiler's atomic builtins: they work on memory
// shared between processes (C++17 has no atomic_ref).
uint32_t load(const uint32_t& w) { return __atomic_load_n(&w, __ATOMIC_ACQUIRE); }
void store(uint32_t& w, uint32_t v) { __atomic_store_n(&w, v, __ATOMIC_RELEASE); }

struct alignas(64) Header {
  uint32_t magic, world;
  uint64_t slot_bytes, total_bytes;
  uint32_t pid[64];  // each rank's process id, written by itself (a dead peer fails the wait early)
};
struct alignas(64) Doorbell {
  uint32_t value;
};
struct alignas(64) Channel {
  uint32_t seq;     // pieces published by the sender
  uint32_t ack;     // pieces consumed by the receiver
  uint32_t tag;     // the collective the piece belongs to (issue order, the same on every rank)
  uint32_t pad;
  uint64_t bytes;   // this piece
  uint64_t total;   // the whole message from this sender
  double arrived_us;  // when the sender entered this collective (steady clock, shared by the host)
};
constexpr int kMaxWorld = 64;

int futex(uint32_t* addr, int op, uint32_t val, const timespec* timeout) {
  return static_cast<int>(syscall(SYS_futex, addr, op, val, timeout, nullptr, 0));
}

class ShmCommunicator : public Communicator {
 public:
  ShmCommunicator(Communicator& base, double timeout_s)
      : base_(&base), rank_(base.rank()), world_(base.world_size()), timeout_s_(timeout_s) {
    SCMOE_CHECK(world_ <= kMaxWorld, "shared-memory transport: at most " << kMaxWorld << " ranks per host (got "
                                                                         << world_ << ")");
    map_segment();
  }
  ~ShmCommunicator() override {
    if (seg_) munmap(seg_, size_);
  }
  void own(std::unique_ptr<Communicator> base) { owned_ = std::move(base); }

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string backend() const override { return base_->backend() + "+shm"; }
  double last_all_arrived_us() const override { return last_all_arrived_us_; }

  void all_reduce_sum(void* buf, size_t count, DType t, Stream* s) override { base_->all_reduce_sum(buf, count, t, s); }
  void all_gather(const void* send, void* recv, size_t count, DType t, Stream* s) override {
    base_->all_gather(send, recv, count, t, s);
  }
  void broadcast(void* buf, size_t count, DType t, int root, Stream* s) override {
    base_->broadcast(buf, count, t, root, s);
  }
  void barrier(Stream* s) override { base_->barrier(s); }

  void all_to_all(const void* send, void* recv, size_t count_per_rank, DType t, Stream* s) override {
    SCMOE_CHECK(send != recv, where("all_to_all") << ": in-place exchange is not supported");
    const size_t chunk = count_per_rank * dtype_size(t);
    std::vector<size_t> bytes(world_, chunk), offsets(world_);
    for (int r = 0; r < world_; r++) offsets[r] = r * chunk;
    submit("all_to_all", send, bytes, offsets, recv, bytes, offsets, s);
  }

  void all_to_all_v(const void* send, const std::vector<size_t>& send_counts,
                    const std::vector<size_t>& send_offsets, void* recv,
                    const std::vector<size_t>& recv_counts, const std::vector<size_t>& recv_offsets, DType t,
                    Stream* s) override {
    check_v_splits(send_counts, send_offsets, recv_counts, recv_offsets);
    auto in_bytes = [es = dtype_size(t)](std::vector<size_t> v) {
      for (auto& x : v) x *= es;
      return v;
    };
    submit("all_to_all_v", send, in_bytes(send_counts), in_bytes(send_offsets), recv, in_bytes(recv_counts),
           in_bytes(recv_offsets), s);
  }

 private:
  // ---- the segment --------------------------------------------------------------------------------

  // Rank 0 creates the segment under a fresh name and broadcasts it; every rank maps it and writes its
  // pid; once all have (an all-reduce of success flags, so every rank learns of any failure) rank 0
  // unlinks the name, so nothing is left in /dev/shm whatever happens later.
  void map_segment() {
    const size_t pairs = size_t(world_) * world_;
    // 32 MiB of slots in all, each between 64 KiB and 4 MiB (larger messages travel in pieces).
    slot_ = std::clamp<size_t>((size_t(32) << 20) / pairs / 4096 * 4096, size_t(64) << 10, size_t(4) << 20);
    const size_t ctl = sizeof(Header) + world_ * sizeof(Doorbell) + pairs * sizeof(Channel);
    data_at_ = (ctl + 4095) / 4096 * 4096;
    size_ = data_at_ + pairs * slot_;

    char name[64] = {0};
    std::string error, created;  // created: the name rank 0 must unlink
    int fd = -1;
    if (rank_ == 0) {
      std::random_device rd;
      std::snprintf(name, sizeof name, "/scmoe-a2a-%d-%08x", int(getpid()), unsigned(rd()));
      fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
      if (fd >= 0) created = name;
      if (fd < 0) {
        error = std::string("shm_open(") + name + "): " + std::strerror(errno);
      } else if (int rc = posix_fallocate(fd, 0, off_t(size_)); rc != 0) {  // tmpfs full: fail now, not SIGBUS later
        error = "reserving " + std::to_string(size_ >> 20) + " MiB in /dev/shm: " + std::strerror(rc);
      }
      if (!error.empty()) name[0] = '\0';  // tells the others to give up too
    }
    base_->broadcast(name, sizeof name, DType::u8, 0, nullptr);
    if (rank_ != 0 && name[0] == '\0') error = "rank 0 could not create the segment";
    if (rank_ != 0 && error.empty()) {
      fd = shm_open(name, O_RDWR, 0600);
      if (fd < 0) error = std::string("shm_open(") + name + "): " + std::strerror(errno) +
                          " (are all ranks on this host?)";
    }
    if (error.empty()) {
      void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      if (p == MAP_FAILED)
        error = std::string("mmap of ") + std::to_string(size_ >> 20) + " MiB: " + std::strerror(errno);
      else
        seg_ = static_cast<char*>(p);
    }
    if (fd >= 0) close(fd);
    if (error.empty() && rank_ == 0) {
      header().world = uint32_t(world_), header().slot_bytes = slot_, header().total_bytes = size_;
      store(header().magic, kMagic);
    }
    int ok = error.empty() ? 1 : 0;
    base_->all_reduce_sum(&ok, 1, DType::i32, nullptr);  // rank 0's header is written before this
    if (error.empty() && ok == world_ &&
        (load(header().magic) != kMagic || header().world != uint32_t(world_) || header().total_bytes != size_))
      error = "the segment's header does not match this job";
    if (error.empty() && ok == world_) store(header().pid[rank_], uint32_t(getpid()));
    int ok2 = error.empty() && ok == world_ ? 1 : 0;
    base_->all_reduce_sum(&ok2, 1, DType::i32, nullptr);
    if (!created.empty()) shm_unlink(created.c_str());
    if (ok2 != world_ && seg_) munmap(seg_, size_), seg_ = nullptr;  // no destructor after a throw
    SCMOE_CHECK(ok2 == world_, where("shared-memory transport setup")
                                   << " failed: " << (error.empty() ? "another rank failed" : error));
  }

  Header& header() { return *reinterpret_cast<Header*>(seg_); }
  Doorbell& doorbell(int r) { return reinterpret_cast<Doorbell*>(seg_ + sizeof(Header))[r]; }
  Channel& channel(int src, int dst) {
    return reinterpret_cast<Channel*>(seg_ + sizeof(Header) + world_ * sizeof(Doorbell))[src * world_ + dst];
  }
  char* slot(int src, int dst) { return seg_ + data_at_ + (size_t(src) * world_ + dst) * slot_; }
  void ring(int r) {
    __atomic_fetch_add(&doorbell(r).value, 1, __ATOMIC_RELEASE);
    futex(&doorbell(r).value, FUTEX_WAKE, INT_MAX, nullptr);
  }

  // ---- the exchange -------------------------------------------------------------------------------

  // Tags are taken in issue order (the same on every rank); each piece carries its tag, so an exchange
  // run out of that order fails with an error instead of mixing two collectives' rows.
  void submit(const char* op, const void* send, std::vector<size_t> sb, std::vector<size_t> so, void* recv,
              std::vector<size_t> rb, std::vector<size_t> ro, Stream* s) {
    const uint32_t tag = next_tag_++;
    size_t sent_to_peers = 0;
    for (int r = 0; r < world_; r++) sent_to_peers += r == rank_ ? 0 : sb[r];
    auto body = [=] {
      {
        std::lock_guard<std::mutex> lock(mu_);
        exchange(op, tag, static_cast<const char*>(send), sb, so, static_cast<char*>(recv), rb, ro);
      }
      simulate_link_delay(sent_to_peers);
    };
    if (s)
      s->enqueue(body);
    else
      body();
  }

  void exchange(const char* op, uint32_t tag, const char* send, const std::vector<size_t>& sb,
                const std::vector<size_t>& so, char* recv, const std::vector<size_t>& rb,
                const std::vector<size_t>& ro) {
    const double arrived = Tracer::now_us();
    double all_arrived = arrived;
    if (sb[rank_]) std::memcpy(recv + ro[rank_], send + so[rank_], sb[rank_]);
    // Every peer gets at least one piece (possibly empty), so each side checks the other's size.
    std::vector<size_t> sent(world_, 0), got(world_, 0);
    std::vector<char> send_done(world_, 0), recv_done(world_, 0);
    send_done[rank_] = recv_done[rank_] = 1;
    int left = 2 * (world_ - 1);
    // A piece that does not fit (another collective, other splits) is left unread and reported after
    // this rank has sent everything it owes, so the peers do not wait for it until their timeout.
    std::string mismatch;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
    while (left > 0) {
      const uint32_t bell = load(doorbell(rank_).value);
      bool progress = false;
      for (int p = 0; p < world_; p++) {
        if (!send_done[p]) {
          Channel& c = channel(rank_, p);
          if (load(c.ack) == load(c.seq)) {  // the peer has taken every earlier piece: the slot is free
            const size_t n = std::min(slot_, sb[p] - sent[p]);
            if (n) std::memcpy(slot(rank_, p), send + so[p] + sent[p], n);
            c.tag = tag, c.bytes = n, c.total = sb[p], c.arrived_us = arrived;
            store(c.seq, load(c.seq) + 1);
            ring(p);
            sent[p] += n;
            if (sent[p] == sb[p]) send_done[p] = 1, left--;
            progress = true;
          }
        }
        if (!recv_done[p]) {
          Channel& c = channel(p, rank_);
          if (load(c.seq) != load(c.ack)) {
            if (c.tag != tag || c.total != rb[p] || got[p] + c.bytes > rb[p]) {
              if (mismatch.empty())
                mismatch = c.tag != tag ? "rank " + std::to_string(p) + " sent rows of collective #" +
                                              std::to_string(c.tag) + " while this rank is at #" +
                                              std::to_string(tag) + " (collectives issued in different orders)"
                                        : "rank " + std::to_string(p) + " sends " + std::to_string(c.total) +
                                              " bytes, this rank expects " + std::to_string(rb[p]) +
                                              " (the ranks disagree on the splits)";
              recv_done[p] = 1, left--, progress = true;
              continue;
            }
            if (c.bytes) std::memcpy(recv + ro[p] + got[p], slot(p, rank_), c.bytes);
            all_arrived = std::max(all_arrived, c.arrived_us);
            got[p] += c.bytes;
            store(c.ack, load(c.ack) + 1);
            ring(p);
            if (got[p] == rb[p]) recv_done[p] = 1, left--;
            progress = true;
          }
        }
      }
      if (progress || left == 0) continue;
      check_peers_alive(op, send_done, recv_done);
      SCMOE_CHECK(std::chrono::steady_clock::now() < deadline,
                  where(op) << " failed: " << waiting_for(send_done, recv_done) << " for " << timeout_s_
                            << " s (shared-memory transport; a peer crashed, hung or issued other collectives)");
      timespec slice{0, 100 * 1000 * 1000};  // wake now and then to notice a dead peer and the deadline
      futex(&doorbell(rank_).value, FUTEX_WAIT, bell, &slice);
    }
    SCMOE_CHECK(mismatch.empty(), where(op) << " failed: " << mismatch);
    last_all_arrived_us_ = all_arrived;
  }


  std::string waiting_for(const std::vector<char>& send_done, const std::vector<char>& recv_done) const {
    std::string ranks;
    for (int p = 0; p < world_; p++)
      if (!send_done[p] || !recv_done[p]) ranks += (ranks.empty() ? "" : ", ") + std::to_string(p);
    return "waited on rank(s) " + ranks;
  }

  void check_peers_alive(const char* op, const std::vector<char>& send_done, const std::vector<char>& recv_done) {
    for (int p = 0; p < world_; p++) {
      if (send_done[p] && recv_done[p]) continue;
      const pid_t pid = pid_t(load(header().pid[p]));
      SCMOE_CHECK(!(pid > 0 && kill(pid, 0) != 0 && errno == ESRCH),
                  where(op) << " failed: rank " << p << " (pid " << pid << ") has exited");
    }
  }

  Communicator* base_;
  std::unique_ptr<Communicator> owned_;  // base_, once set-up succeeded
  int rank_, world_;
  double timeout_s_;
  char* seg_ = nullptr;
  size_t size_ = 0, slot_ = 0, data_at_ = 0;
  uint32_t next_tag_ = 0;
  double last_all_arrived_us_ = -1;
  std::mutex mu_;  // one exchange at a time in this process: pieces of two would interleave on a channel
};

}  // namespace

std::unique_ptr<Communicator> make_shm_communicator(std::unique_ptr<Communicator>& base, double timeout_s) {
  SCMOE_CHECK(base, "make_shm_communicator: no base communicator");
  auto shm = std::make_unique<ShmCommunicator>(*base, timeout_s);  // throws with base untouched
  shm->own(std::move(base));
  return shm;
}

}  // namespace scmoe
