// A small TCP key-value store hosted by rank 0 at MASTER_ADDR:MASTER_PORT: the rendezvous point for
// Gloo (and the NCCL unique id). Clients set/get keys; get blocks until the key exists or the timeout
// passes. On timeout the error names the ranks that never arrived (keys "rank/<r>" registered by
// check_in).
#pragma once
#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace scmoe {

class TcpStore {
 public:
  // Rank 0 (is_server) listens on port and serves in a background thread; every rank (rank 0
  // included) connects as a client. Connection attempts retry until timeout. The server binds the
  // loopback interface when addr is a loopback address and every interface otherwise (a host name
  // may resolve to 127.0.1.1 locally yet name the LAN address on other nodes). IPv4 only. Port 0
  // (server only): the kernel picks a free port, see port().
  TcpStore(const std::string& addr, int port, bool is_server, std::chrono::milliseconds timeout);
  // Rank 0 keeps serving until every other client has disconnected (bounded by the timeout; not at
  // all while an exception unwinds), since other ranks may still be reading keys.
  ~TcpStore();
  TcpStore(const TcpStore&) = delete;
  TcpStore& operator=(const TcpStore&) = delete;

  void set(const std::string& key, const std::vector<char>& value);
  std::vector<char> get(const std::string& key);     // blocks until present (or timeout: scmoe::Error)
  // The value of `key` if it appears within `timeout`; a server that does not answer within `timeout`
  // + `grace` is an scmoe::Error (for diagnosing a hung run quickly: grace defaults to 10 s elsewhere).
  bool try_get(const std::string& key, std::chrono::milliseconds timeout, std::chrono::milliseconds grace,
               std::string* value);
  bool check(const std::vector<std::string>& keys);  // all present, non-blocking
  // Blocks until all keys exist; the timeout error names the missing ones.
  void wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout);
  // Registers this rank and waits until all world_size ranks have; the timeout error lists the
  // missing ranks ("rendezvous timed out after 30 s: ranks 2, 3 never arrived at 127.0.0.1:29500").
  void check_in(int rank, int world_size);

  int port() const;  // the port in use (the kernel's pick when constructed with port 0)
  std::chrono::milliseconds timeout() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace scmoe
