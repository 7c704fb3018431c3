// The Gloo communicator across N processes: run as N ranks by train/launch (or by hand with RANK,
// WORLD_SIZE, MASTER_ADDR, MASTER_PORT set); with --shm the All-to-Alls go through the shared-memory
// transport wrapped around it. With --dead-peer rank 1 vanishes before a collective, with --hung-peer
// it stops responding; either way the others must fail with an error naming the collective within the
// (5 s) timeout instead of hanging.
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "core/check.h"
#include "core/stream.h"
#include "core/trace.h"
#include "tests/testing.h"

using scmoe::Communicator;
using scmoe::DType;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::vector<size_t> prefix_offsets(const std::vector<size_t>& counts) {
  std::vector<size_t> offsets(counts.size(), 0);
  for (size_t i = 1; i < counts.size(); ++i) offsets[i] = offsets[i - 1] + counts[i - 1];
  return offsets;
}

size_t sum(const std::vector<size_t>& v) {
  size_t s = 0;
  for (size_t x : v) s += x;
  return s;
}

void test_all_reduce(Communicator& c) {
  const int w = c.world_size(), r = c.rank();
  // Larger than Gloo's 1 MiB segment, so the reduction runs in several pieces.
  std::vector<float> f(300000);
  for (size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>(r) + static_cast<float>(i % 7) * 0.5f;
  c.all_reduce_sum(f.data(), f.size(), DType::f32, nullptr);
  bool ok = true;
  for (size_t i = 0; i < f.size(); ++i)
    ok = ok && f[i] == static_cast<float>(w * (w - 1) / 2) +
                           static_cast<float>(w) * static_cast<float>(i % 7) * 0.5f;
  CHECK(ok);

  std::vector<double> d(1000);
  for (size_t i = 0; i < d.size(); ++i) d[i] = (r + 1) * 0.25 + static_cast<double>(i);
  c.all_reduce_sum(d.data(), d.size(), DType::f64, nullptr);
  ok = true;
  for (size_t i = 0; i < d.size(); ++i)
    ok = ok && d[i] == w * (w + 1) / 2 * 0.25 + w * static_cast<double>(i);
  CHECK(ok);

  // Beyond 2^53: an integer sum that a float path would round.
  const int64_t big = int64_t{1} << 55;
  std::vector<int64_t> v(257);
  for (size_t i = 0; i < v.size(); ++i) v[i] = big * (r + 1) + 1 + static_cast<int64_t>(i);
  c.all_reduce_sum(v.data(), v.size(), DType::i64, nullptr);
  ok = true;
  for (size_t i = 0; i < v.size(); ++i)
    ok = ok && v[i] == big * (w * (w + 1) / 2) + w * (1 + static_cast<int64_t>(i));
  CHECK(ok);

  c.all_reduce_sum(nullptr, 0, DType::f32, nullptr);  // empty: a no-op on every rank
}

void test_all_to_all(Communicator& c) {
  const int w = c.world_size(), r = c.rank();
  const int n = 5;
  std::vector<int32_t> send(static_cast<size_t>(w * n)), recv(send.size(), -1);
  for (int p = 0; p < w; ++p)
    for (int j = 0; j < n; ++j) send[static_cast<size_t>(p * n + j)] = r * 1000 + p * 10 + j;
  c.all_to_all(send.data(), recv.data(), n, DType::i32, nullptr);
  bool ok = true;
  for (int q = 0; q < w; ++q)
    for (int j = 0; j < n; ++j) ok = ok && recv[static_cast<size_t>(q * n + j)] == q * 1000 + r * 10 + j;
  CHECK(ok);
}

// Several MiB per peer: more than the shared-memory transport's slot (4 MiB with 2 ranks, 2 MiB with
// 4), so the message travels in pieces.
void test_all_to_all_large(Communicator& c) {
  const int w = c.world_size(), r = c.rank();
  const size_t n = (size_t(5) << 20) / sizeof(int32_t) + 7;  // int32 per peer: just over 5 MiB
  std::vector<int32_t> send(n * static_cast<size_t>(w)), recv(send.size(), -1);
  for (int p = 0; p < w; ++p)
    for (size_t j = 0; j < n; ++j) send[p * n + j] = static_cast<int32_t>((r * 16 + p) * 1000003 + j);
  c.all_to_all(send.data(), recv.data(), n, DType::i32, nullptr);
  bool ok = true;
  for (int q = 0; q < w; ++q)
    for (size_t j = 0; j < n; ++j) ok = ok && recv[q * n + j] == static_cast<int32_t>((q * 16 + r) * 1000003 + j);
  CHECK(ok);
}

// The shared-memory transport knows when every rank had entered an exchange: rank 0 enters 300 ms late
// and the others see it; Gloo cannot tell (negative).
void test_arrival_time(Communicator& c, bool shm) {
  std::vector<float> send(4 * static_cast<size_t>(c.world_size()), 1.0f), recv(send.size());
  c.barrier(nullptr);
  if (c.rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const double entered = scmoe::Tracer::now_us();
  c.all_to_all(send.data(), recv.data(), 4, DType::f32, nullptr);
  const double done = scmoe::Tracer::now_us(), arrived = c.last_all_arrived_us();
  if (!shm) {
    CHECK(arrived < 0);
    return;
  }
  std::printf("rank %d: entered the exchange at +0, every rank had at %+.1f ms, done at %+.1f ms\n", c.rank(),
              (arrived - entered) / 1000, (done - entered) / 1000);
  CHECK(arrived >= entered && arrived <= done);
  CHECK(c.rank() == 0 ? arrived - entered < 100e3 : arrived - entered > 200e3);
}

// Shared memory only, and last (the unread piece stays in its slot): rank 1 expects one element more
// from rank 0 than rank 0 sends. Rank 1 fails naming the disagreement, after sending everything it
// owes, so every other rank completes the exchange. Also: rank 0 has unlinked the segment's name.
void test_shm_bad_splits_and_cleanup(Communicator& c) {
  const int w = c.world_size(), r = c.rank();
  if (r == 0) {
    const std::string mine = "scmoe-a2a-" + std::to_string(getpid()) + "-";
    bool left_behind = false;
    for (const auto& e : std::filesystem::directory_iterator("/dev/shm"))
      left_behind |= e.path().filename().string().rfind(mine, 0) == 0;
    CHECK(!left_behind);
  }
  std::vector<size_t> sc(static_cast<size_t>(w), 2), rc(sc);
  if (r == 1) rc[0] = 3;
  auto so = prefix_offsets(sc), ro = prefix_offsets(rc);
  std::vector<int32_t> send(sum(sc), 5), recv(sum(rc), -1);
  auto run = [&] { c.all_to_all_v(send.data(), sc, so, recv.data(), rc, ro, DType::i32, nullptr); };
  if (r == 1) {
    CHECK_THROWS_WITH(run(), "rank 0 sends 8 bytes, this rank expects 12 (the ranks disagree on the splits)");
  } else {
    run();
    CHECK(recv == std::vector<int32_t>(recv.size(), 5));
  }
}

// Rank r sends (r + p) % 3 elements to peer p, so some splits are empty; element j of the split from
// q to p holds q * 10000 + p * 100 + j.
size_t split(int from, int to) { return static_cast<size_t>((from + to) % 3); }

// The packed uneven exchange above, as buffers this rank sends and the check of what it received.
struct PackedSplits {
  int w, r;
  std::vector<size_t> sc, rc, so, ro;
  std::vector<int64_t> send, recv;
  PackedSplits(int w_, int r_) : w(w_), r(r_) {
    for (int p = 0; p < w; ++p) {
      sc.push_back(split(r, p));
      rc.push_back(split(p, r));
    }
    so = prefix_offsets(sc), ro = prefix_offsets(rc);
    send.assign(sum(sc), 0), recv.assign(sum(rc), -1);
    for (int p = 0; p < w; ++p)
      for (size_t j = 0; j < sc[p]; ++j) send[so[p] + j] = r * 10000 + p * 100 + static_cast<int64_t>(j);
  }
  void run(Communicator& c, scmoe::Stream* s) { c.all_to_all_v(send.data(), sc, so, recv.data(), rc, ro, DType::i64, s); }
  bool received_right() const {
    bool ok = true;
    for (int q = 0; q < w; ++q)
      for (size_t j = 0; j < rc[q]; ++j)
        ok = ok && recv[ro[q] + j] == q * 10000 + r * 100 + static_cast<int64_t>(j);
    return ok;
  }
};

void test_all_to_all_v_packed(Communicator& c) {
  PackedSplits x(c.world_size(), c.rank());
  x.run(c, nullptr);
  CHECK(x.received_right());
}

// Splits in reverse rank order with gaps between them: the gaps must come back untouched.
void test_all_to_all_v_scattered(Communicator& c) {
  const int w = c.world_size(), r = c.rank();
  const size_t stride = 4;  // > the largest split (2), leaving a gap after each
  std::vector<size_t> sc, rc, so, ro;
  for (int p = 0; p < w; ++p) {
    sc.push_back(split(r, p));
    rc.push_back(split(p, r));
    so.push_back(static_cast<size_t>(w - 1 - p) * stride + 1);
    ro.push_back(static_cast<size_t>(w - 1 - p) * stride + 1);
  }
  const float gap = -7.0f;
  std::vector<float> send(static_cast<size_t>(w) * stride + 1, gap), recv(send.size(), gap);
  for (int p = 0; p < w; ++p)
    for (size_t j = 0; j < sc[p]; ++j) send[so[p] + j] = static_cast<float>(r * 10000 + p * 100 + j);
  std::vector<float> expected(recv.size(), gap);
  for (int q = 0; q < w; ++q)
    for (size_t j = 0; j < rc[q]; ++j) expected[ro[q] + j] = static_cast<float>(q * 10000 + r * 100 + j);
  c.all_to_all_v(send.data(), sc, so, recv.data(), rc, ro, DType::f32, nullptr);
  CHECK(recv == expected);
}

void test_all_to_all_v_all_empty(Communicator& c) {
  std::vector<size_t> zeros(static_cast<size_t>(c.world_size()), 0);
  c.all_to_all_v(nullptr, zeros, zeros, nullptr, zeros, zeros, DType::f32, nullptr);
  CHECK(true);  // reaching here on every rank is the check
}

void test_all_to_all_v_bad_splits(Communicator& c) {
  std::vector<size_t> short_counts(static_cast<size_t>(c.world_size()) + 1, 0);
  std::vector<size_t> ok(static_cast<size_t>(c.world_size()), 0);
  CHECK_THROWS_WITH(c.all_to_all_v(nullptr, short_counts, ok, nullptr, ok, ok, DType::f32, nullptr),
                    "send_counts has");
}

void test_all_gather(Communicator& c) {
  const int w = c.world_size(), r = c.rank();
  std::vector<double> send = {r * 10.0, r * 10.0 + 1, r * 10.0 + 2};
  std::vector<double> recv(3 * static_cast<size_t>(w), -1.0);
  c.all_gather(send.data(), recv.data(), send.size(), DType::f64, nullptr);
  bool ok = true;
  for (int q = 0; q < w; ++q)
    for (size_t j = 0; j < 3; ++j) ok = ok && recv[static_cast<size_t>(q) * 3 + j] == q * 10.0 + j;
  CHECK(ok);
}

void test_broadcast(Communicator& c) {
  const int root = c.world_size() - 1;  // non-zero whenever there are two ranks or more
  std::vector<double> buf(1000, -1.0);
  if (c.rank() == root)
    for (size_t i = 0; i < buf.size(); ++i) buf[i] = 3.0 * static_cast<double>(i) + 1;
  c.broadcast(buf.data(), buf.size(), DType::f64, root, nullptr);
  bool ok = true;
  for (size_t i = 0; i < buf.size(); ++i) ok = ok && buf[i] == 3.0 * static_cast<double>(i) + 1;
  CHECK(ok);

  std::vector<uint8_t> bytes(17, c.rank() == 0 ? 0xab : 0);
  c.broadcast(bytes.data(), bytes.size(), DType::u8, 0, nullptr);
  CHECK(bytes == std::vector<uint8_t>(17, 0xab));
  CHECK_THROWS_WITH(c.broadcast(bytes.data(), 1, DType::u8, c.world_size(), nullptr), "does not exist");
}

// Rank 0 arrives late; nobody may leave the barrier before it does.
void test_barrier(Communicator& c) {
  c.barrier(nullptr);  // line everybody up first
  auto t0 = Clock::now();
  if (c.rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  c.barrier(nullptr);
  CHECK(c.rank() == 0 || seconds_since(t0) >= 0.2);
}

// Collectives enqueued on a worker stream run in stream order, off the calling thread.
void test_on_worker_stream(Communicator& c) {
  const int w = c.world_size(), r = c.rank();
  auto stream = scmoe::make_cpu_stream("comm", true);
  std::vector<float> x(1000, static_cast<float>(r + 1));
  std::vector<float> gathered(static_cast<size_t>(w), 0.0f);
  c.all_reduce_sum(x.data(), x.size(), DType::f32, stream.get());
  // Stream order: the gather sees the reduced value.
  c.all_gather(x.data(), gathered.data(), 1, DType::f32, stream.get());
  PackedSplits v(w, r);
  v.run(c, stream.get());
  c.barrier(stream.get());
  stream->synchronize();

  const float total = static_cast<float>(w * (w + 1) / 2);
  CHECK(x.front() == total && x.back() == total);
  CHECK(gathered == std::vector<float>(static_cast<size_t>(w), total));
  CHECK(v.received_right());
}

// A 50 MB/s link with 30 ms latency: each all_to_all(_v) takes at least latency + bytes / bandwidth.
void test_simulated_link(Communicator& c) {
  const int w = c.world_size();
  const size_t n = 65536;  // floats per peer: 256 KiB
  std::vector<float> send(n * static_cast<size_t>(w), 1.0f), recv(send.size());
  scmoe::SimulatedLink link;
  link.bandwidth_gb_s = 0.05;
  link.latency_us = 30000;
  c.set_simulated_link(link);
  const double expected = 0.030 + static_cast<double>(n * sizeof(float) * (w - 1)) / 0.05e9;
  c.barrier(nullptr);
  auto t0 = Clock::now();
  c.all_to_all(send.data(), recv.data(), n, DType::f32, nullptr);
  double took = seconds_since(t0);
  CHECK(took >= 0.95 * expected && took < expected + 2.0);

  // all_to_all_v with the same bytes, on a worker stream: the delay holds the stream, not the host.
  std::vector<size_t> counts(static_cast<size_t>(w), n);
  auto offsets = prefix_offsets(counts);
  auto stream = scmoe::make_cpu_stream("comm", true);
  c.barrier(nullptr);
  t0 = Clock::now();
  c.all_to_all_v(send.data(), counts, offsets, recv.data(), counts, offsets, DType::f32, stream.get());
  double host_blocked = seconds_since(t0);
  stream->synchronize();
  took = seconds_since(t0);
  CHECK(host_blocked < 0.5 * expected);
  CHECK(took >= 0.95 * expected && took < expected + 2.0);

  c.set_simulated_link(scmoe::SimulatedLink{});
  c.barrier(nullptr);
  t0 = Clock::now();
  c.all_to_all(send.data(), recv.data(), n, DType::f32, nullptr);
  CHECK(seconds_since(t0) < expected + 2.0);
}

int report(int rank) {
  if (testing_::failures() == 0 && testing_::checks() > 0) {
    std::printf("rank %d: %d checks passed\n", rank, testing_::checks());
    return 0;
  }
  std::printf("rank %d: %d of %d checks failed\n", rank, testing_::failures(), testing_::checks());
  return 1;
}

// Expects `collective` to fail within the timeout with an error naming `op`, this rank and the world.
template <class F>
void expect_dead_peer_error(Communicator& c, const char* op, double timeout_s, F collective) {
  auto t0 = Clock::now();
  std::string error;
  try {
    collective();
  } catch (const scmoe::Error& e) {
    error = e.what();
  }
  double took = seconds_since(t0);
  std::printf("rank %d: %s with a failed peer failed after %.1f s: %s\n", c.rank(), op, took, error.c_str());
  std::string named = std::string(op) + " on rank " + std::to_string(c.rank()) + " of " +
                      std::to_string(c.world_size()) + " failed";
  CHECK(error.find(named) != std::string::npos);
  CHECK(took < timeout_s + 5.0);
}

// Rank 1 dies (or hangs, then leaves) with status 0, so that a launcher does not tear the others down
// before they report: this exercises the communicator's own failure detection, not the launcher's. The
// others exit 1, as a training process whose collective failed would, and ignore SIGTERM so that the
// launcher's teardown after the first of them exits cannot cut off the reports of the rest.
int run_failed_peer(Communicator& c, bool hang, double timeout_s) {
  SCMOE_CHECK(c.world_size() >= 2, "--dead-peer / --hung-peer need at least 2 ranks");
  c.barrier(nullptr);  // everybody is connected
  if (c.rank() != 1) std::signal(SIGTERM, SIG_IGN);
  if (c.rank() == 1) {
    // Dying: wait until the others are inside the collective. Hanging: outlast both their timeouts.
    std::this_thread::sleep_for(std::chrono::duration<double>(hang ? 2 * timeout_s + 2 : 0.3));
    std::fflush(stdout);
    ::_exit(0);
  }
  std::vector<float> x(1000, 1.0f);
  expect_dead_peer_error(c, "all_reduce_sum", timeout_s,
                         [&] { c.all_reduce_sum(x.data(), x.size(), DType::f32, nullptr); });
  // The same failure, reported through a worker stream's synchronize().
  auto stream = scmoe::make_cpu_stream("comm", true);
  std::vector<float> recv(x.size());
  expect_dead_peer_error(c, "all_to_all", timeout_s, [&] {
    c.all_to_all(x.data(), recv.data(), x.size() / static_cast<size_t>(c.world_size()), DType::f32,
                 stream.get());
    stream->synchronize();
  });
  report(c.rank());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode;
  bool shm = false;
  for (int i = 1; i < argc; i++) {
    if (std::strcmp(argv[i], "--shm") == 0)
      shm = true;
    else
      mode = argv[i];
  }
  const bool failed_peer = mode == "--dead-peer" || mode == "--hung-peer";
  const double timeout_s = failed_peer ? 5.0 : 30.0;
  int rank = -1;
  try {
    scmoe::ProcessGroupEnv env = scmoe::read_process_group_env();
    rank = env.rank;
    auto comm = scmoe::make_gloo_communicator(env, timeout_s);
    if (shm) {
      comm = scmoe::make_shm_communicator(comm, timeout_s);
      CHECK(comm->backend() == "gloo+shm");
    }
    if (failed_peer) return run_failed_peer(*comm, mode == "--hung-peer", timeout_s);
    test_all_reduce(*comm);
    test_all_to_all(*comm);
    test_all_to_all_large(*comm);
    test_arrival_time(*comm, shm);
    test_all_to_all_v_packed(*comm);
    test_all_to_all_v_scattered(*comm);
    test_all_to_all_v_all_empty(*comm);
    test_all_to_all_v_bad_splits(*comm);
    test_all_gather(*comm);
    test_broadcast(*comm);
    test_barrier(*comm);
    test_on_worker_stream(*comm);
    test_simulated_link(*comm);
    if (shm) test_shm_bad_splits_and_cleanup(*comm);
    comm->barrier(nullptr);  // nobody tears down while a peer still runs a check
  } catch (const std::exception& e) {
    std::printf("rank %d: error: %s\n", rank, e.what());
    return 1;
  }
  return report(rank);
}
