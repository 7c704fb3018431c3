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
  // Rank 0 (is_server) listens on port (binding addr) and serves in a background thread; every rank
  // (rank 0 included) connects as a client. Connection attempts retry until timeout.
  TcpStore(const std::string& addr, int port, bool is_server, std::chrono::milliseconds timeout);
  ~TcpStore();
  TcpStore(const TcpStore&) = delete;
  TcpStore& operator=(const TcpStore&) = delete;

  void set(const std::string& key, const std::vector<char>& value);
  std::vector<char> get(const std::string& key);  // blocks until present (or timeout: scmoe::Error)
  bool check(const std::vector<std::string>& keys);  // all present, non-blocking
  // Registers this rank and waits until all world_size ranks have; the timeout error lists the
  // missing ranks ("rendezvous timed out after 30 s: ranks 2, 3 never arrived at 127.0.0.1:29500").
  void check_in(int rank, int world_size);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace scmoe
