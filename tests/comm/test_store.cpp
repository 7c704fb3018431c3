// The single-process side of comm/: TcpStore (server and clients are threads talking over loopback
// TCP), read_process_group_env and the single-process communicator.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "comm/store.h"
#include "comm/store_wire.h"
#include "tests/testing.h"

using scmoe::TcpStore;
using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

namespace {

const char* kAddr = "127.0.0.1";

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::vector<char> bytes(const std::string& s) { return std::vector<char>(s.begin(), s.end()); }

std::unique_ptr<TcpStore> client_of(const TcpStore& server, Ms timeout = Ms(5000)) {
  return std::make_unique<TcpStore>(kAddr, server.port(), false, timeout);
}

// A port nobody listens on: bind an ephemeral one, then release it.
int unused_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

void test_set_get_check() {
  TcpStore server(kAddr, 0, true, Ms(5000));
  CHECK(server.port() > 0);
  auto client = client_of(server);
  std::string binary("a\0b\xff", 4);
  server.set("k", bytes(binary));
  CHECK(client->get("k") == bytes(binary));
  client->set("empty", {});
  CHECK(server.get("empty").empty());
  client->set("k", bytes("overwritten"));
  CHECK(server.get("k") == bytes("overwritten"));
  CHECK(client->check({"k", "empty"}));
  CHECK(!client->check({"k", "never"}));
  CHECK(client->check({}));
}

void test_blocking_get_satisfied_later() {
  TcpStore server(kAddr, 0, true, Ms(5000));
  auto client = client_of(server);
  auto t0 = Clock::now();
  auto later = std::async(std::launch::async, [&] {
    std::this_thread::sleep_for(Ms(200));
    server.set("late", bytes("here"));
  });
  CHECK(client->get("late") == bytes("here"));
  CHECK(seconds_since(t0) >= 0.15);
  later.get();
  // wait() on several keys returns once the last one is set.
  auto setter = std::async(std::launch::async, [&] {
    std::this_thread::sleep_for(Ms(100));
    server.set("w1", {});
    server.set("w2", {});
  });
  client->wait({"w1", "w2"}, Ms(5000));
  CHECK(client->check({"w1", "w2"}));
  setter.get();
}

void test_timeouts_name_what_is_missing() {
  TcpStore server(kAddr, 0, true, Ms(5000));
  auto client = client_of(server, Ms(300));
  auto t0 = Clock::now();
  CHECK_THROWS_WITH(client->get("never"), "timed out after 0.3 s waiting for key 'never'");
  double took = seconds_since(t0);
  CHECK(took >= 0.25 && took < 3.0);
  server.set("here", {});
  CHECK_THROWS_WITH(client->wait({"here", "gone1", "gone2"}, Ms(200)), "'gone1', 'gone2'");
}

void test_check_in() {
  TcpStore server(kAddr, 0, true, Ms(5000));
  // Three ranks arriving at different times all get through.
  std::vector<std::future<void>> ranks;
  for (int r = 1; r < 3; ++r)
    ranks.push_back(std::async(std::launch::async, [&, r] {
      std::this_thread::sleep_for(Ms(50 * r));
      client_of(server)->check_in(r, 3);
    }));
  server.check_in(0, 3);
  for (auto& f : ranks) f.get();

  // In a world of 4 where only ranks 0 and 2 arrive, the error names ranks 1 and 3.
  TcpStore lonely(kAddr, 0, true, Ms(400));
  auto rank2 = std::async(std::launch::async, [&] {
    try {
      client_of(lonely, Ms(400))->check_in(2, 4);
    } catch (const std::exception&) {
    }
  });
  CHECK_THROWS_WITH(lonely.check_in(0, 4), "rendezvous timed out after 0.4 s: ranks 1, 3 never arrived at");
  rank2.get();
  CHECK_THROWS_WITH(lonely.check_in(4, 4), "outside a world of 4");
}

void test_port_in_use() {
  TcpStore first(kAddr, 0, true, Ms(5000));
  std::string in_use = "port " + std::to_string(first.port()) + " is already in use";
  CHECK_THROWS_WITH(TcpStore(kAddr, first.port(), true, Ms(1000)), in_use.c_str());
  CHECK_THROWS_WITH(TcpStore(kAddr, first.port(), true, Ms(1000)), "--master-port");
}

void test_unreachable_server() {
  int port = unused_port();
  auto t0 = Clock::now();
  std::string unreachable = "could not reach the rendezvous store at 127.0.0.1:" + std::to_string(port) +
                            " within 0.3 s (is rank 0 running?";
  CHECK_THROWS_WITH(TcpStore(kAddr, port, false, Ms(300)), unreachable.c_str());
  CHECK(seconds_since(t0) < 3.0);
}

// A client that connects before the server starts gets in once it does (connect retries).
void test_client_before_server() {
  int port = unused_port();
  auto client = std::async(std::launch::async, [port] {
    TcpStore c(kAddr, port, false, Ms(5000));
    return c.get("hello");
  });
  std::this_thread::sleep_for(Ms(300));
  TcpStore server(kAddr, port, true, Ms(5000));
  server.set("hello", bytes("world"));
  CHECK(client.get() == bytes("world"));
}

// Rank 0 finishing first must not pull the store away from a rank that still reads from it.
void test_server_outlives_its_clients() {
  std::promise<int> port;
  std::promise<void> connected;
  auto reader = std::async(std::launch::async, [&] {
    TcpStore c(kAddr, port.get_future().get(), false, Ms(5000));
    connected.set_value();
    std::this_thread::sleep_for(Ms(300));  // rank 0's destructor is running by now
    return c.get("result");
  });
  {
    TcpStore server(kAddr, 0, true, Ms(5000));
    port.set_value(server.port());
    server.set("result", bytes("42"));
    connected.get_future().wait();
  }
  CHECK(reader.get() == bytes("42"));
}

// ---- read_process_group_env -----------------------------------------------------------------------

const char* const kGroupVars[] = {"RANK",
                                  "WORLD_SIZE",
                                  "LOCAL_RANK",
                                  "LOCAL_WORLD_SIZE",
                                  "MASTER_ADDR",
                                  "MASTER_PORT",
                                  "SLURM_PROCID",
                                  "SLURM_NTASKS",
                                  "SLURM_LOCALID",
                                  "SLURM_NTASKS_PER_NODE",
                                  "SLURM_TASKS_PER_NODE",
                                  "SLURM_NODEID"};

// Replaces the process-group variables with exactly `vars` ("NAME=value" each).
void set_group_env(const std::vector<std::string>& vars) {
  for (const char* name : kGroupVars) ::unsetenv(name);
  for (const auto& v : vars) {
    size_t eq = v.find('=');
    ::setenv(v.substr(0, eq).c_str(), v.substr(eq + 1).c_str(), 1);
  }
}

void test_group_env_sources() {
  set_group_env({});
  scmoe::ProcessGroupEnv e = scmoe::read_process_group_env();
  CHECK(e.rank == 0 && e.world_size == 1 && e.source == "single process");

  set_group_env({"RANK=5", "WORLD_SIZE=8", "LOCAL_RANK=1", "LOCAL_WORLD_SIZE=4", "MASTER_ADDR=10.0.0.7",
                 "MASTER_PORT=1234"});
  e = scmoe::read_process_group_env();
  CHECK(e.rank == 5 && e.world_size == 8 && e.local_rank == 1 && e.local_world_size == 4);
  CHECK(e.master_addr == "10.0.0.7" && e.master_port == 1234 && e.source == "launcher env");

  // Slurm: 4 tasks on node 0 and 2 on node 1; this is node 1's second task.
  set_group_env({"SLURM_PROCID=5", "SLURM_NTASKS=6", "SLURM_LOCALID=1", "SLURM_TASKS_PER_NODE=4,2",
                 "SLURM_NODEID=1", "MASTER_ADDR=node0"});
  e = scmoe::read_process_group_env();
  CHECK(e.rank == 5 && e.world_size == 6 && e.local_rank == 1 && e.local_world_size == 2);
  CHECK(e.master_addr == "node0" && e.master_port == 29500 && e.source == "slurm");
  set_group_env({"SLURM_PROCID=5", "SLURM_NTASKS=6", "SLURM_LOCALID=1", "SLURM_TASKS_PER_NODE=2(x3)",
                 "SLURM_NODEID=2", "MASTER_ADDR=node0"});
  CHECK(scmoe::read_process_group_env().local_world_size == 2);

  // One node needs no MASTER_ADDR: loopback and the default port.
  set_group_env({"SLURM_PROCID=1", "SLURM_NTASKS=2", "SLURM_LOCALID=1", "SLURM_NTASKS_PER_NODE=2"});
  e = scmoe::read_process_group_env();
  CHECK(e.master_addr == "127.0.0.1" && e.master_port == 29500);
}

void test_group_env_errors() {
  auto read = [](const std::vector<std::string>& vars) {
    set_group_env(vars);
    scmoe::read_process_group_env();
  };
  CHECK_THROWS_WITH(read({"RANK=4", "WORLD_SIZE=4"}), "RANK=4 must be in [0, WORLD_SIZE=4)");
  CHECK_THROWS_WITH(read({"RANK=one", "WORLD_SIZE=4"}), "RANK='one' is not an integer");
  CHECK_THROWS_WITH(read({"WORLD_SIZE=4"}), "RANK is not set");
  CHECK_THROWS_WITH(read({"RANK=0", "WORLD_SIZE=0"}), "WORLD_SIZE=0 must be at least 1");
  CHECK_THROWS_WITH(read({"RANK=0", "WORLD_SIZE=2", "LOCAL_RANK=2", "LOCAL_WORLD_SIZE=2"}),
                    "LOCAL_RANK=2 must be in [0, LOCAL_WORLD_SIZE=2)");
  CHECK_THROWS_WITH(read({"RANK=0", "WORLD_SIZE=8", "LOCAL_RANK=0", "LOCAL_WORLD_SIZE=4"}),
                    "MASTER_ADDR is not set");
  CHECK_THROWS_WITH(read({"RANK=0", "WORLD_SIZE=2", "MASTER_PORT=70000"}), "MASTER_PORT=70000 must be in");
  CHECK_THROWS_WITH(read({"SLURM_PROCID=0", "SLURM_NTASKS=2", "SLURM_LOCALID=3", "SLURM_NTASKS_PER_NODE=2"}),
                    "SLURM_LOCALID=3 must be in [0,");
  CHECK_THROWS_WITH(read({"SLURM_PROCID=0", "SLURM_NTASKS=2"}), "SLURM_LOCALID is not set");
  set_group_env({});
}

// ---- the single-process communicator ------------------------------------------------------------

void test_single_process_communicator() {
  auto c = scmoe::make_single_process_communicator();
  CHECK(c->rank() == 0 && c->world_size() == 1 && c->backend() == "single");
  std::vector<float> x = {1, 2, 3}, y(3, 0);
  c->all_reduce_sum(x.data(), x.size(), scmoe::DType::f32, nullptr);
  CHECK(x == std::vector<float>({1, 2, 3}));
  c->all_to_all(x.data(), y.data(), 3, scmoe::DType::f32, nullptr);
  CHECK(y == x);
  std::vector<int64_t> send = {0, 7, 8}, recv = {0, 0, 0, 0};
  c->all_to_all_v(send.data(), {2}, {1}, recv.data(), {2}, {2}, scmoe::DType::i64, nullptr);
  CHECK(recv == std::vector<int64_t>({0, 0, 7, 8}));
  CHECK_THROWS_WITH(c->all_to_all_v(send.data(), {2}, {1}, recv.data(), {1}, {2}, scmoe::DType::i64, nullptr),
                    "sends itself 2 elements but expects to receive 1");
  CHECK_THROWS_WITH(c->broadcast(x.data(), 3, scmoe::DType::f32, 1, nullptr),
                    "broadcast on rank 0 of 1: root 1");
  c->barrier(nullptr);
}

// The parser rank 0 runs on whatever reaches its port: bounded fields, counts and timeouts.
void test_wire_bounds() {
  auto decode = [](const scmoe::Writer& w) {
    scmoe::BufferReader in(w.bytes().data(), w.bytes().size());
    return scmoe::read_store_request(in);
  };
  scmoe::Writer ok;
  ok.u8(scmoe::kStoreGet).str("rank/1").u64(30000);
  const scmoe::StoreRequest r = decode(ok);
  CHECK(r.op == scmoe::kStoreGet && r.key == "rank/1" && r.timeout == Ms(30000));
  scmoe::Writer forever;
  forever.u8(scmoe::kStoreGet).str("k").u64(~uint64_t{0});  // would overflow now() + timeout
  CHECK_THROWS_WITH(decode(forever), "a timeout of 18446744073709551615 ms");
  scmoe::Writer huge;
  huge.u8(scmoe::kStoreSet).u32(1u << 30);
  CHECK_THROWS_WITH(decode(huge), "a field of 1073741824 bytes");
  scmoe::Writer announced;  // 200 MB announced, 3 bytes sent: an early end, not a 200 MB string
  announced.u8(scmoe::kStoreSet).u32(200u << 20).u8(1).u8(2).u8(3);
  CHECK_THROWS_WITH(decode(announced), "message ends early");
  scmoe::Writer keys;
  keys.u8(scmoe::kStoreCheck).u32(scmoe::kStoreMaxKeys + 1);
  CHECK_THROWS_WITH(decode(keys), "keys");
  scmoe::Writer op;
  op.u8(9);
  CHECK_THROWS_WITH(decode(op), "unknown request 9");
}

// try_get: a quick answer for a present key, false for an absent one after its own short timeout.
void test_try_get() {
  TcpStore server(kAddr, 0, true, Ms(5000));
  server.set("alive/1", bytes("3 7 all_reduce_sum"));
  std::string v;
  CHECK(server.try_get("alive/1", Ms(200), Ms(1000), &v) && v == "3 7 all_reduce_sum");
  const auto t0 = Clock::now();
  CHECK(!server.try_get("alive/2", Ms(200), Ms(1000), &v));
  CHECK(seconds_since(t0) < 2.0);
}

}  // namespace

int main() {
  test_wire_bounds();
  test_try_get();
  test_set_get_check();
  test_blocking_get_satisfied_later();
  test_timeouts_name_what_is_missing();
  test_check_in();
  test_port_in_use();
  test_unreachable_server();
  test_client_before_server();
  test_server_outlives_its_clients();
  test_group_env_sources();
  test_group_env_errors();
  test_single_process_communicator();
  TEST_MAIN_END();
}
