// TcpStore: rank 0 serves a key-value map over TCP (one thread per client) and every rank talks to it
// through a blocking client; the messages are comm/store_wire.h's.
#include "comm/store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "comm/store_wire.h"
#include "core/check.h"

namespace scmoe {
namespace {

using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

// How much longer than a request's own timeout a client waits for the reply before calling the
// server unresponsive (the server answers a timed-out GET/WAIT itself).
constexpr Ms kReplyGrace{10000};

// A timeout as the server accepts it (longer ones are refused as garbage).
uint64_t wire_ms(Ms t) { return uint64_t(std::clamp<int64_t>(t.count(), 0, kStoreMaxTimeout.count())); }

std::string seconds_str(Ms t) {
  std::ostringstream os;
  os << static_cast<double>(t.count()) / 1000.0 << " s";
  return os.str();
}

void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // small requests: no Nagle delay
}

void set_recv_timeout(int fd, Ms t) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(t.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((t.count() % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

sockaddr_in resolve_ipv4(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res);
  SCMOE_CHECK(rc == 0 && res,
              "cannot resolve the rendezvous address '" << host << "' (MASTER_ADDR): " << ::gai_strerror(rc));
  sockaddr_in a{};
  std::memcpy(&a, res->ai_addr, sizeof a);
  ::freeaddrinfo(res);
  a.sin_port = htons(static_cast<uint16_t>(port));
  return a;
}

// Loopback stays private to this host; anything else listens everywhere (see the header).
sockaddr_in bind_address(const std::string& addr, int port) {
  sockaddr_in a = resolve_ipv4(addr, port);
  bool loopback = (ntohl(a.sin_addr.s_addr) >> 24) == 127;
  if (!loopback) a.sin_addr.s_addr = htonl(INADDR_ANY);
  return a;
}

int listen_on(const std::string& addr, int port, int* bound_port) {
  sockaddr_in a = bind_address(addr, port);
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  SCMOE_CHECK(fd >= 0, "rendezvous store: socket(): " << std::strerror(errno));
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);  // a previous run's TIME_WAIT is fine
  // Non-blocking: a connection reset between poll() and accept() must not stall the accept loop.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    int err = errno;
    ::close(fd);
    SCMOE_CHECK(err != EADDRINUSE, "cannot start the rendezvous store: port "
                                       << port << " is already in use on " << addr
                                       << " (another run still alive? choose another port with "
                                          "--master-port, or --master-port 0 to pick a free one)");
    SCMOE_FAIL("cannot bind the rendezvous store to " << addr << ":" << port << ": " << std::strerror(err));
  }
  if (::listen(fd, SOMAXCONN) != 0) {
    int err = errno;
    ::close(fd);
    SCMOE_FAIL("rendezvous store: listen() on port " << port << ": " << std::strerror(err));
  }
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  *bound_port = ntohs(a.sin_port);
  return fd;
}

// Rank 0's side: the map, an accept thread and one thread per client connection.
class Server {
 public:
  Server(const std::string& addr, int port) : listen_fd_(listen_on(addr, port, &port_)) {
    if (::pipe2(wake_, O_CLOEXEC) != 0) {
      ::close(listen_fd_);
      SCMOE_FAIL("rendezvous store: pipe(): " << std::strerror(errno));
    }
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~Server() { stop(); }
  int port() const { return port_; }

  // Returns once no client is connected or at the deadline, whichever comes first.
  void wait_for_clients(Clock::time_point deadline) {
    std::unique_lock<std::mutex> lock(m_);
    clients_cv_.wait_until(lock, deadline, [this] { return open_fds_.empty(); });
  }

 private:
  void accept_loop() {
    for (;;) {
      pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};  // stop() writes to wake_
      int ready = ::poll(p, 2, -1);
      std::lock_guard<std::mutex> lock(m_);
      if (stopping_) return;
      if (ready <= 0) continue;
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      set_nodelay(fd);
      open_fds_.insert(fd);
      threads_.emplace_back([this, fd] { serve(fd); });
    }
  }

  void serve(int fd) {
    try {
      while (handle_request(fd)) {
      }
    } catch (const std::exception&) {
      // The client disconnected (the normal end) or sent garbage: either way drop the connection.
    }
    std::lock_guard<std::mutex> lock(m_);
    open_fds_.erase(fd);  // erase and close under the lock so stop() never touches a reused fd
    ::close(fd);
    clients_cv_.notify_all();
  }

  // Serves one request; false once the server is stopping.
  bool handle_request(int fd) {
    FdReader in(fd);
    StoreRequest r = read_store_request(in);
    Writer w;
    if (r.op == kStoreSet) {
      {
        std::lock_guard<std::mutex> lock(m_);
        kv_[r.key] = std::move(r.value);
      }
      keys_cv_.notify_all();
      w.u8(kStoreOk);
    } else if (r.op == kStoreGet) {
      std::string value;
      const bool found = wait_keys({r.key}, r.timeout, nullptr, &value);
      w.u8(found ? kStoreOk : kStoreTimedOut);
      if (found) w.str(value);
    } else if (r.op == kStoreWait) {
      std::vector<std::string> missing;
      const bool all = wait_keys(r.keys, r.timeout, &missing, nullptr);
      w.u8(all ? kStoreOk : kStoreTimedOut);
      if (!all) w.strs(missing);
    } else {  // kStoreCheck
      w.u8(wait_keys(r.keys, Ms(0), nullptr, nullptr) ? 1 : 0);
    }
    w.send(fd);
    std::lock_guard<std::mutex> lock(m_);
    return !stopping_;
  }

  // Waits until every key exists. On timeout fills `missing`; on success with one key, `value`.
  bool wait_keys(const std::vector<std::string>& keys, Ms timeout, std::vector<std::string>* missing,
                 std::string* value) {
    std::unique_lock<std::mutex> lock(m_);
    auto all_present = [&] {
      return std::all_of(keys.begin(), keys.end(), [&](const std::string& k) { return kv_.count(k) > 0; });
    };
    keys_cv_.wait_until(lock, Clock::now() + timeout, [&] { return stopping_ || all_present(); });
    if (!all_present()) {
      if (missing)
        for (const auto& k : keys)
          if (!kv_.count(k)) missing->push_back(k);
      return false;
    }
    if (value) *value = kv_.at(keys.front());
    return true;
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stopping_ = true;
      for (int fd : open_fds_) ::shutdown(fd, SHUT_RDWR);  // wakes client threads blocked in recv
    }
    keys_cv_.notify_all();
    char byte = 0;
    while (::write(wake_[1], &byte, 1) < 0 && errno == EINTR) {
    }
    acceptor_.join();
    ::close(listen_fd_);
    ::close(wake_[0]);
    ::close(wake_[1]);
    for (auto& t : threads_) t.join();  // only the (joined) acceptor appends, so no lock needed
  }

  int port_ = 0;
  int listen_fd_;
  int wake_[2] = {-1, -1};  // self-pipe that interrupts the accept loop's poll()
  std::mutex m_;
  std::condition_variable keys_cv_;     // a key was set, or stopping
  std::condition_variable clients_cv_;  // a client disconnected
  std::map<std::string, std::string> kv_;
  std::set<int> open_fds_;
  std::vector<std::thread> threads_;
  bool stopping_ = false;
  std::thread acceptor_;
};

// Connects within `remaining`; false (with the reason in *why) on failure.
bool try_connect(int fd, const sockaddr_in& a, Ms remaining, std::string* why) {
  int flags = ::fcntl(fd, F_GETFL, 0);
  ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);  // non-blocking so an unreachable host honours the timeout
  int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a);
  if (rc != 0 && errno == EINPROGRESS) {
    pollfd p{fd, POLLOUT, 0};
    int ready = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(remaining.count(), 1)));
    if (ready <= 0) {
      *why = "connect timed out";
      return false;
    }
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    errno = err;
    rc = err == 0 ? 0 : -1;
  }
  if (rc != 0) {
    *why = std::strerror(errno);
    return false;
  }
  ::fcntl(fd, F_SETFL, flags);
  return true;
}

// Every rank's side: one connection, one request at a time.
class Client {
 public:
  Client(const std::string& addr, int port, Ms timeout) : where_(addr + ":" + std::to_string(port)) {
    fd_ = connect_with_retry(addr, port, timeout);
    reader_ = FdReader(fd_);
    // One round trip: once it returns, rank 0 has accepted this connection and counts it among the
    // clients it waits for before stopping (a connection still in its accept backlog would be reset).
    check({});
  }
  ~Client() { ::close(fd_); }
  const std::string& where() const { return where_; }

  void set(const std::string& key, const std::string& value) {
    Writer req;
    req.u8(kStoreSet).str(key).str(value);
    call(req, kReplyGrace, "SET '" + key + "'", [&] { reply().u8(); });
  }

  bool get(const std::string& key, Ms timeout, std::string* value, Ms grace = kReplyGrace) {
    Writer req;
    req.u8(kStoreGet).str(key).u64(wire_ms(timeout));
    return call(req, timeout + grace, "GET '" + key + "'", [&] {
      if (reply().u8() != kStoreOk) return false;
      *value = reply().str();
      return true;
    });
  }

  bool wait(const std::vector<std::string>& keys, Ms timeout, std::vector<std::string>* missing) {
    Writer req;
    req.u8(kStoreWait).strs(keys).u64(wire_ms(timeout));
    return call(req, timeout + kReplyGrace, "WAIT", [&] {
      if (reply().u8() == kStoreOk) return true;
      *missing = reply().strs();
      return false;
    });
  }

  bool check(const std::vector<std::string>& keys) {
    Writer req;
    req.u8(kStoreCheck).strs(keys);
    return call(req, kReplyGrace, "CHECK", [&] { return reply().u8() == 1; });
  }

 private:
  static int connect_with_retry(const std::string& addr, int port, Ms timeout) {
    auto deadline = Clock::now() + timeout;
    std::string why;
    for (;;) {
      sockaddr_in a = resolve_ipv4(addr, port);
      int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      SCMOE_CHECK(fd >= 0, "rendezvous store: socket(): " << std::strerror(errno));
      auto remaining = std::chrono::duration_cast<Ms>(deadline - Clock::now());
      if (try_connect(fd, a, remaining, &why)) {
        set_nodelay(fd);
        return fd;
      }
      ::close(fd);
      // Rank 0 may simply not be listening yet: retry until the deadline.
      SCMOE_CHECK(Clock::now() < deadline, "could not reach the rendezvous store at "
                                               << addr << ":" << port << " within " << seconds_str(timeout)
                                               << " (is rank 0 running? last error: " << why << ")");
      std::this_thread::sleep_for(std::min<Clock::duration>(Ms(100), deadline - Clock::now()));
    }
  }

  // Sends one request and reads its reply under the lock, so threads sharing the store cannot
  // interleave their messages. After a broken exchange the connection is unusable.
  template <class ReadReply>
  auto call(const Writer& req, Ms reply_within, const std::string& what, ReadReply read_reply)
      -> decltype(read_reply()) {
    std::lock_guard<std::mutex> lock(m_);
    SCMOE_CHECK(!broken_, "the connection to the rendezvous store at " << where_ << " broke earlier");
    try {
      set_recv_timeout(fd_, reply_within);
      req.send(fd_);
      return read_reply();
    } catch (const WireError& e) {
      broken_ = true;
      lost(what, e.what());
    }
  }

  [[noreturn]] void lost(const std::string& what, const char* why) const {
    SCMOE_FAIL("lost the connection to the rendezvous store at " << where_ << " during " << what << " ("
                                                                 << why << "; did rank 0 exit?)");
  }

  FdReader& reply() { return reader_; }

  std::string where_;
  int fd_ = -1;
  FdReader reader_{-1};
  std::mutex m_;
  bool broken_ = false;
};

}  // namespace

struct TcpStore::Impl {
  std::string addr;
  int port = 0;
  Ms timeout{0};
  std::unique_ptr<Server> server;  // rank 0 only
  std::unique_ptr<Client> client;  // declared last: destroyed before the server
};

TcpStore::TcpStore(const std::string& addr, int port, bool is_server, Ms timeout) : impl_(new Impl) {
  SCMOE_CHECK(timeout.count() > 0, "rendezvous store: the timeout must be positive");
  SCMOE_CHECK(port >= 0 && port <= 65535, "rendezvous store: port " << port << " is out of range");
  SCMOE_CHECK(is_server || port > 0, "rendezvous store: a client needs the server's port (not 0)");
  impl_->addr = addr;
  impl_->timeout = timeout;
  if (is_server) {
    impl_->server = std::make_unique<Server>(addr, port);
    port = impl_->server->port();
  }
  impl_->port = port;
  impl_->client = std::make_unique<Client>(addr, port, timeout);
}

TcpStore::~TcpStore() {
  impl_->client.reset();  // our own connection must not count as a rank still in need
  // While unwinding, this rank has failed: lingering would only delay the error it carries.
  if (impl_->server && std::uncaught_exceptions() == 0)
    impl_->server->wait_for_clients(Clock::now() + impl_->timeout);
}

void TcpStore::set(const std::string& key, const std::vector<char>& value) {
  impl_->client->set(key, std::string(value.begin(), value.end()));
}

std::vector<char> TcpStore::get(const std::string& key) {
  std::string v;
  SCMOE_CHECK(impl_->client->get(key, impl_->timeout, &v),
              "timed out after " << seconds_str(impl_->timeout) << " waiting for key '" << key
                                 << "' in the rendezvous store at " << impl_->client->where());
  return std::vector<char>(v.begin(), v.end());
}

bool TcpStore::try_get(const std::string& key, Ms timeout, Ms grace, std::string* value) {
  return impl_->client->get(key, timeout, value, grace);
}

bool TcpStore::check(const std::vector<std::string>& keys) { return impl_->client->check(keys); }

void TcpStore::wait(const std::vector<std::string>& keys, Ms timeout) {
  std::vector<std::string> missing;
  if (impl_->client->wait(keys, timeout, &missing)) return;
  std::ostringstream names;
  for (size_t i = 0; i < missing.size(); ++i) names << (i ? ", '" : "'") << missing[i] << "'";
  SCMOE_FAIL("timed out after " << seconds_str(timeout) << " waiting for keys " << names.str()
                                << " in the rendezvous store at " << impl_->client->where());
}

void TcpStore::check_in(int rank, int world_size) {
  SCMOE_CHECK(world_size >= 1 && rank >= 0 && rank < world_size,
              "check_in: rank " << rank << " is outside a world of " << world_size);
  set("rank/" + std::to_string(rank), {'1'});
  std::vector<std::string> keys, missing;
  for (int r = 0; r < world_size; ++r) keys.push_back("rank/" + std::to_string(r));
  if (impl_->client->wait(keys, impl_->timeout, &missing)) return;
  std::ostringstream ranks;
  for (size_t i = 0; i < missing.size(); ++i) ranks << (i ? ", " : "") << missing[i].substr(5);
  SCMOE_FAIL("rendezvous timed out after "
             << seconds_str(impl_->timeout) << ": rank" << (missing.size() > 1 ? "s " : " ") << ranks.str()
             << " never arrived at " << impl_->client->where() << " (rank " << rank << " of " << world_size
             << " waited)");
}

int TcpStore::port() const { return impl_->port; }

std::chrono::milliseconds TcpStore::timeout() const { return impl_->timeout; }

}  // namespace scmoe
