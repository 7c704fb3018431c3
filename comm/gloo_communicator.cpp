// The Gloo communicator: collectives on CPU buffers over TCP, bootstrapped through rank 0's TcpStore.
#include <arpa/inet.h>
#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/alltoall.h>
#include <gloo/alltoallv.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/common/logging.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "comm/store.h"
#include "core/check.h"

namespace scmoe {
namespace {

using Ms = std::chrono::milliseconds;

// Gloo's rendezvous reads and writes peer addresses through this view of our store.
class GlooStoreAdapter : public gloo::rendezvous::Store {
 public:
  explicit GlooStoreAdapter(TcpStore& store) : store_(store) {}
  void set(const std::string& key, const std::vector<char>& data) override { store_.set(key, data); }
  std::vector<char> get(const std::string& key) override { return store_.get(key); }
  void wait(const std::vector<std::string>& keys) override { store_.wait(keys, store_.timeout()); }
  void wait(const std::vector<std::string>& keys, const Ms& timeout) override { store_.wait(keys, timeout); }

 private:
  TcpStore& store_;
};

// The local address the kernel would use to reach MASTER_ADDR: on one host that is loopback, across
// hosts the interface facing rank 0's. Connecting a UDP socket sends nothing; it only picks a route.
std::string local_address_towards(const std::string& master_addr, int port) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(master_addr.c_str(), nullptr, &hints, &res);
  SCMOE_CHECK(rc == 0 && res, "cannot resolve MASTER_ADDR '" << master_addr << "': " << ::gai_strerror(rc));
  sockaddr_in to{};
  std::memcpy(&to, res->ai_addr, sizeof to);
  ::freeaddrinfo(res);
  to.sin_port = htons(static_cast<uint16_t>(port));
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in local{};
  socklen_t len = sizeof local;
  bool ok = fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0 &&
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0;
  if (fd >= 0) ::close(fd);
  SCMOE_CHECK(ok, "cannot find a local interface that reaches MASTER_ADDR '"
                      << master_addr << "' (set SCMOE_GLOO_IFACE_ADDR to this host's address)");
  char text[INET_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET, &local.sin_addr, text, sizeof text);
  return text;
}

std::string gloo_interface_address(const ProcessGroupEnv& env) {
  if (const char* a = std::getenv("SCMOE_GLOO_IFACE_ADDR"); a && *a) return a;
  return local_address_towards(env.master_addr, env.master_port);
}

// Calls f with a value of the C++ type behind t (only the type matters), for Gloo's typed reductions.
template <class F>
void with_scalar_type(DType t, F&& f) {
  switch (t) {
    case DType::f32:
      return f(float{});
    case DType::f64:
      return f(double{});
    case DType::i32:
      return f(int32_t{});
    case DType::i64:
      return f(int64_t{});
    case DType::u8:
      return f(uint8_t{});
  }
  SCMOE_FAIL("unknown DType " << static_cast<int>(t));
}

// Keeps p alive until the process exits (reachable, so not reported as a leak).
void keep_until_exit(std::shared_ptr<void> p) {
  static std::mutex m;
  static auto* kept = new std::vector<std::shared_ptr<void>>;
  std::lock_guard<std::mutex> lock(m);
  kept->push_back(std::move(p));
}

// A Gloo collective's options, which own the buffers it registers with the transport. When a peer
// fails, Gloo's I/O thread signals the error to every pending buffer of the pair
// (UnboundBuffer::signalException) while the waiting thread is already unwinding, and a buffer's
// destructor does not wait for that thread: freeing the options then is a use after free inside Gloo
// (ThreadSanitizer reported it in CI as pthread_cond_destroy against pthread_cond_broadcast). A
// communicator whose collective failed is finished, so a failed collective's options are kept, not freed.
template <class Options>
class GlooOptions {
 public:
  explicit GlooOptions(const std::shared_ptr<gloo::Context>& ctx) : opts_(std::make_shared<Options>(ctx)) {}
  GlooOptions(const GlooOptions&) = delete;
  GlooOptions& operator=(const GlooOptions&) = delete;
  ~GlooOptions() {
    if (std::uncaught_exceptions() > unwinding_) keep_until_exit(std::move(opts_));
  }
  Options* operator->() { return opts_.get(); }
  Options& operator*() { return *opts_; }

 private:
  std::shared_ptr<Options> opts_;
  int unwinding_ = std::uncaught_exceptions();  // exceptions in flight when the collective began
};

// One side of an all_to_all_v in bytes: per-peer counts and offsets into the buffer.
struct ByteSplits {
  std::vector<size_t> count, offset;

  ByteSplits(const std::vector<size_t>& counts, const std::vector<size_t>& offsets, size_t elem_size) {
    for (size_t c : counts) count.push_back(c * elem_size);
    for (size_t o : offsets) offset.push_back(o * elem_size);
  }
  size_t total() const { return std::accumulate(count.begin(), count.end(), size_t{0}); }
  // Gloo's alltoallv takes counts only and lays the splits out back to back from offset 0.
  bool packed() const {
    size_t next = 0;
    for (size_t r = 0; r < count.size(); next += count[r], ++r)
      if (count[r] > 0 && offset[r] != next) return false;
    return true;
  }
  std::vector<int64_t> counts_i64() const { return std::vector<int64_t>(count.begin(), count.end()); }
};

// Every rank beats "alive/<rank>" = "<beat> <tag> <op>" into the store twice a second from its own
// thread and connection: when a collective times out, the ranks whose beat stopped are named as hung
// (a stopped or wedged process stops every thread), and the live ones by the collective they last
// entered (a slow rank, or ranks issuing collectives in different orders).
class Heartbeat {
 public:
  static constexpr Ms kPeriod{500};

  Heartbeat(const std::string& addr, int port, int rank, Ms timeout)
      : store_(addr, port, false, timeout), key_("alive/" + std::to_string(rank)) {
    beat();
    thread_ = std::thread([this] { loop(); });
  }
  ~Heartbeat() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  // The collective this rank's last one to start (op: a string literal).
  void entered(const char* op, uint32_t tag) {
    std::lock_guard<std::mutex> lock(m_);
    op_ = op, tag_ = tag;
  }

 private:
  void beat() {
    std::string v;
    {
      std::lock_guard<std::mutex> lock(m_);
      v = std::to_string(beats_++) + " " + std::to_string(tag_) + " " + op_;
    }
    store_.set(key_, std::vector<char>(v.begin(), v.end()));
  }
  void loop() {
    std::unique_lock<std::mutex> lock(m_);
    while (!cv_.wait_for(lock, kPeriod, [this] { return stop_; })) {
      lock.unlock();
      try {
        beat();
      } catch (const std::exception&) {
        return;  // the store is gone (rank 0 exited or hangs): nothing left to tell
      }
      lock.lock();
    }
  }

  TcpStore store_;
  std::string key_;
  std::mutex m_;
  std::condition_variable cv_;
  bool stop_ = false;
  uint64_t beats_ = 0;
  const char* op_ = "none yet";
  uint32_t tag_ = 0;
  std::thread thread_;
};

class GlooCommunicator : public Communicator {
 public:
  GlooCommunicator(const ProcessGroupEnv& env, double timeout_s)
      : rank_(env.rank), world_(env.world_size), timeout_(static_cast<int64_t>(timeout_s * 1000)) {
    SCMOE_CHECK(timeout_.count() > 0,
                "gloo communicator: the timeout must be positive (got " << timeout_s << " s)");
    store_ = std::make_unique<TcpStore>(env.master_addr, env.master_port, rank_ == 0, timeout_);
    store_->check_in(rank_, world_);  // on timeout, names the absent ranks (Gloo's own wait would not)
    connect(gloo_interface_address(env));
    heartbeat_ = std::make_unique<Heartbeat>(env.master_addr, store_->port(), rank_, timeout_);
  }
  ~GlooCommunicator() override { heartbeat_.reset(); }  // its connection closes before rank 0's store

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string backend() const override { return "gloo"; }

  void all_reduce_sum(void* buf, size_t count, DType t, Stream* s) override {
    const uint32_t tag = next_tag();
    if (count == 0) return;  // every rank passes the same count, so all skip together
    run("all_reduce_sum", tag, s, [=] {
      with_scalar_type(t, [&](auto zero) {
        using T = decltype(zero);
        GlooOptions<gloo::AllreduceOptions> opts(ctx_);
        opts->setOutput(static_cast<T*>(buf), count);  // no input: reduces in place
        opts->setReduceFunction(
            static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<T>));
        opts->setTag(tag);
        opts->setTimeout(timeout_);
        gloo::allreduce(*opts);
      });
    });
  }

  void all_to_all(const void* send, void* recv, size_t count_per_rank, DType t, Stream* s) override {
    const uint32_t tag = next_tag();
    SCMOE_CHECK(send != recv, where("all_to_all") << ": in-place exchange is not supported");
    const size_t chunk = count_per_rank * dtype_size(t);
    if (chunk == 0) return;
    run("all_to_all", tag, s, [=] {
      GlooOptions<gloo::AlltoallOptions> opts(ctx_);
      opts->setInput(const_cast<char*>(static_cast<const char*>(send)), chunk * world_);  // only read
      opts->setOutput(static_cast<char*>(recv), chunk * world_);
      opts->setTag(tag);
      opts->setTimeout(timeout_);
      gloo::alltoall(*opts);
      simulate_link_delay(chunk * (world_ - 1));
    });
  }

  void all_to_all_v(const void* send, const std::vector<size_t>& send_counts,
                    const std::vector<size_t>& send_offsets, void* recv,
                    const std::vector<size_t>& recv_counts, const std::vector<size_t>& recv_offsets, DType t,
                    Stream* s) override {
    const uint32_t tag = next_tag();
    check_v_splits(send_counts, send_offsets, recv_counts, recv_offsets);
    const size_t es = dtype_size(t);
    ByteSplits in(send_counts, send_offsets, es), out(recv_counts, recv_offsets, es);
    const size_t sent_to_peers = in.total() - in.count[rank_];
    run("all_to_all_v", tag, s, [=] {
      exchange_v(static_cast<const char*>(send), in, static_cast<char*>(recv), out, tag);
      simulate_link_delay(sent_to_peers);
    });
  }

  void all_gather(const void* send, void* recv, size_t count, DType t, Stream* s) override {
    const uint32_t tag = next_tag();
    const size_t bytes = count * dtype_size(t);
    if (bytes == 0) return;
    run("all_gather", tag, s, [=] {
      GlooOptions<gloo::AllgatherOptions> opts(ctx_);
      opts->setInput(const_cast<char*>(static_cast<const char*>(send)), bytes);  // only read
      opts->setOutput(static_cast<char*>(recv), bytes * world_);
      opts->setTag(tag);
      opts->setTimeout(timeout_);
      gloo::allgather(*opts);
    });
  }

  void broadcast(void* buf, size_t count, DType t, int root, Stream* s) override {
    const uint32_t tag = next_tag();
    SCMOE_CHECK(root >= 0 && root < world_, where("broadcast") << ": root " << root << " does not exist");
    const size_t bytes = count * dtype_size(t);
    if (bytes == 0) return;
    run("broadcast", tag, s, [=] {
      GlooOptions<gloo::BroadcastOptions> opts(ctx_);
      opts->setOutput(static_cast<char*>(buf), bytes);  // the root sends from it, the others receive into it
      opts->setRoot(root);
      opts->setTag(tag);
      opts->setTimeout(timeout_);
      gloo::broadcast(*opts);
    });
  }

  void barrier(Stream* s) override {
    const uint32_t tag = next_tag();
    run("barrier", tag, s, [=] {
      GlooOptions<gloo::BarrierOptions> opts(ctx_);
      opts->setTag(tag);
      opts->setTimeout(timeout_);
      gloo::barrier(*opts);
    });
  }

 private:
  void connect(const std::string& iface_addr) {
    std::shared_ptr<gloo::transport::Device> device;
    try {
      gloo::transport::tcp::attr attr;
      attr.hostname = iface_addr;
      device = gloo::transport::tcp::CreateDevice(attr);
    } catch (const std::exception& e) {
      SCMOE_FAIL(where("gloo setup") << ": cannot create the TCP device on " << iface_addr << ": " << e.what()
                                     << " (set SCMOE_GLOO_IFACE_ADDR to an address of this host that the "
                                        "other ranks can reach)");
    }
    auto ctx = std::make_shared<gloo::rendezvous::Context>(rank_, world_);
    ctx->setTimeout(timeout_);
    GlooStoreAdapter adapter(*store_);
    gloo::rendezvous::PrefixStore store("gloo", adapter);  // Gloo's keys ("0", "1", ...) in their own space
    try {
      ctx->connectFullMesh(store, device);
    } catch (const Error&) {
      throw;  // the store's own message already says what was missing
    } catch (const std::exception& e) {
      SCMOE_FAIL(where("gloo rendezvous")
                 << " failed: " << e.what() << " (a peer crashed or could not connect to " << iface_addr
                 << " within " << seconds() << " s)");
    }
    ctx_ = std::move(ctx);
  }

  // Tags are handed out in issue order, which every rank shares, so that collectives on different
  // streams can be in flight at once without their messages mixing.
  uint32_t next_tag() { return next_tag_.fetch_add(1, std::memory_order_relaxed); }

  double seconds() const { return static_cast<double>(timeout_.count()) / 1000.0; }

  // Runs body now (s == nullptr) or on s, turning Gloo's exceptions into errors naming the collective
  // (and, on a timeout or a broken connection, the ranks to blame).
  void run(const char* op, uint32_t tag, Stream* s, std::function<void()> body) {
    auto guarded = [this, op, tag, body = std::move(body)] {
      if (heartbeat_) heartbeat_->entered(op, tag);
      try {
        body();
      } catch (const gloo::IoException& e) {
        SCMOE_FAIL(where(op) << " failed: " << e.what() << " (timeout " << seconds() << " s); "
                             << diagnose_peers(op, tag));
      } catch (const gloo::Exception& e) {
        SCMOE_FAIL(where(op) << " failed: " << e.what());
      } catch (const gloo::EnforceNotMet& e) {
        SCMOE_FAIL(where(op) << " failed a Gloo check: " << e.what());
      }
    };
    if (s)
      s->enqueue(std::move(guarded));
    else
      guarded();
  }

  // Gloo's alltoallv wants each side packed back to back; other layouts go through a staging copy.
  void exchange_v(const char* send, const ByteSplits& in, char* recv, const ByteSplits& out, uint32_t tag) {
    std::vector<char> in_stage, out_stage;
    if (!in.packed()) {
      in_stage.resize(in.total());
      for (size_t r = 0, at = 0; r < in.count.size(); at += in.count[r], ++r)
        if (in.count[r]) std::memcpy(in_stage.data() + at, send + in.offset[r], in.count[r]);
      send = in_stage.data();
    }
    char* dst = recv;
    if (!out.packed()) {
      out_stage.resize(out.total());
      dst = out_stage.data();
    }
    GlooOptions<gloo::AlltoallvOptions> opts(ctx_);
    opts->setInput(const_cast<char*>(send), in.counts_i64());  // only read
    opts->setOutput(dst, out.counts_i64());
    opts->setTag(tag);
    opts->setTimeout(timeout_);
    gloo::alltoallv(*opts);
    if (!out.packed())
      for (size_t r = 0, at = 0; r < out.count.size(); at += out.count[r], ++r)
        if (out.count[r]) std::memcpy(recv + out.offset[r], out_stage.data() + at, out.count[r]);
  }

  // Which peers are hung (their heartbeat stopped over ~3 periods) and where the live ones are.
  std::string diagnose_peers(const char* op, uint32_t tag) {
    std::lock_guard<std::mutex> lock(diagnose_m_);  // collectives on two streams may fail together
    auto read_beats = [&](std::vector<std::string>& out) {
      out.assign(world_, "");
      for (int p = 0; p < world_; p++)
        if (p != rank_) store_->try_get("alive/" + std::to_string(p), Ms(200), Ms(2000), &out[p]);
    };
    std::vector<std::string> before, after;
    try {
      read_beats(before);
      std::this_thread::sleep_for(3 * Heartbeat::kPeriod);
      read_beats(after);
    } catch (const std::exception&) {
      return "rank 0, which hosts the rendezvous store, does not answer either: it is stopped, hung or gone";
    }
    std::ostringstream hung, live;
    for (int p = 0; p < world_; p++) {
      if (p == rank_) continue;
      if (after[p].empty() ||
          after[p].substr(0, after[p].find(' ')) == before[p].substr(0, before[p].find(' '))) {
        hung << (hung.tellp() > 0 ? ", " : "") << p;
        continue;
      }
      std::istringstream v(after[p]);
      uint64_t beat = 0;
      uint32_t ptag = 0;
      std::string pop;
      v >> beat >> ptag >> pop;
      if (ptag != tag) live << "; rank " << p << " last entered collective #" << ptag << " (" << pop << ")";
    }
    std::ostringstream m;
    if (hung.tellp() > 0)
      m << "rank(s) " << hung.str() << " show no sign of life (no heartbeat for "
        << 3 * Heartbeat::kPeriod.count() / 1000.0 << " s: stopped, hung or dead)";
    else
      m << "every rank is alive, so one was slower than the timeout (a long checkpoint or data check? raise "
           "comm.timeout_s) or the ranks issued collectives in different orders";
    if (live.tellp() > 0) m << "; this rank waits in #" << tag << " (" << op << ")" << live.str();
    return m.str();
  }

  int rank_, world_;
  Ms timeout_;
  std::unique_ptr<TcpStore> store_;  // kept for the communicator's life: rank 0 hosts it for the others
  std::unique_ptr<Heartbeat> heartbeat_;
  std::mutex diagnose_m_;
  std::shared_ptr<gloo::Context> ctx_;
  std::atomic<uint32_t> next_tag_{0};
};

}  // namespace

std::unique_ptr<Communicator> make_gloo_communicator(const ProcessGroupEnv& env, double timeout_s) {
  return std::make_unique<GlooCommunicator>(env, timeout_s);
}

}  // namespace scmoe
