// CPU streams and events: FIFO order, cross-stream record/wait, real overlap, error capture, event
// re-recording and draining on destruction. Run it under ThreadSanitizer too: the event ordering is
// what makes the plain (non-atomic) data shared between streams below race-free.
#include <chrono>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/stream.h"
#include "tests/testing.h"

using namespace scmoe;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// Holds a worker stream at a known point until the test releases it.
struct Gate {
  std::promise<void> open;
  std::shared_future<void> opened = open.get_future().share();
  void block_stream(Stream& s) {
    auto f = opened;
    s.enqueue([f] { f.wait(); });
  }
};

void test_fifo_order() {
  auto s = make_cpu_stream("side", true);
  std::vector<int> seen;  // touched only by the worker until synchronize()
  for (int i = 0; i < 1000; ++i) s->enqueue([&seen, i] { seen.push_back(i); });
  s->synchronize();
  bool ordered = seen.size() == 1000;
  for (size_t i = 0; ordered && i < seen.size(); ++i) ordered = seen[i] == static_cast<int>(i);
  CHECK(ordered);
  CHECK(s->name() == "side");
}

void test_record_wait_across_streams() {
  auto a = make_cpu_stream("comm", true);
  auto main_stream = make_cpu_stream("compute", false);
  auto e = make_cpu_event();
  int data = 0;  // written by a's worker, read here after the wait: the event is the only ordering
  a->enqueue([&data] {
    sleep_ms(50);
    data = 42;
  });
  a->record(*e);
  auto t0 = Clock::now();
  main_stream->wait(*e);
  double blocked = ms_since(t0);
  CHECK(blocked >= 40.0);
  CHECK(main_stream->waited_ms() >= 40.0);
  CHECK(main_stream->waited_ms() <= blocked + 1.0);
  CHECK(data == 42);
  CHECK(e->query());
  double done_at = e->completed_at_ms();
  double now = std::chrono::duration<double, std::milli>(Clock::now().time_since_epoch()).count();
  CHECK(done_at > 0.0 && done_at <= now);
  main_stream->reset_waited();
  CHECK(main_stream->waited_ms() == 0.0);
  a->synchronize();
}

// A worker stream's wait() blocks its own thread, not the host, and counts that time.
void test_worker_wait_counts_time() {
  auto a = make_cpu_stream("a", true);
  auto b = make_cpu_stream("b", true);
  auto e = make_cpu_event();
  a->enqueue([] { sleep_ms(50); });
  a->record(*e);
  auto t0 = Clock::now();
  b->wait(*e);
  CHECK(ms_since(t0) < 30.0);  // the host did not block
  b->synchronize();
  CHECK(b->waited_ms() >= 40.0);  // read from the host after synchronize()
  CHECK(a->waited_ms() == 0.0);
}

// Ping-pong: each round a feeds b and b feeds a, re-recording the same two events every round.
void test_cross_dependency() {
  auto a = make_cpu_stream("a", true);
  auto b = make_cpu_stream("b", true);
  auto ea = make_cpu_event();
  auto eb = make_cpu_event();
  std::vector<int> trace;  // appended by both workers; only the events order the appends
  long value = 1;
  const int rounds = 200;
  for (int r = 0; r < rounds; ++r) {
    a->enqueue([&trace, &value] {
      trace.push_back(0);
      value = value * 3 % 1000003;
    });
    a->record(*ea);
    b->wait(*ea);
    b->enqueue([&trace, &value] {
      trace.push_back(1);
      value = (value + 7) % 1000003;
    });
    b->record(*eb);
    a->wait(*eb);
  }
  a->synchronize();
  b->synchronize();
  long expect = 1;
  for (int r = 0; r < rounds; ++r) expect = (expect * 3 % 1000003 + 7) % 1000003;
  CHECK(value == expect);
  bool alternates = trace.size() == 2u * rounds;
  for (size_t i = 0; alternates && i < trace.size(); ++i) alternates = trace[i] == static_cast<int>(i % 2);
  CHECK(alternates);
}

void test_overlap_is_real() {
  auto side = make_cpu_stream("comm", true);
  auto t0 = Clock::now();
  side->enqueue([] { sleep_ms(100); });
  volatile double sink = 0.0;
  while (ms_since(t0) < 100.0) sink = sink + 1.0;
  side->synchronize();
  double total = ms_since(t0);
  CHECK(total >= 100.0);
  CHECK(total < 160.0);
}

void check_exceptions(bool worker) {
  auto s = make_cpu_stream("s", worker);
  auto e = make_cpu_event();
  bool later_ran = false;
  s->enqueue([] { throw std::runtime_error("boom 7"); });
  s->enqueue([&later_ran] { later_ran = true; });  // skipped: its input may be the failed task's output
  s->record(*e);                                   // still completes, so waiters cannot deadlock
  e->synchronize();
  CHECK(e->query());
  CHECK_THROWS_WITH(s->synchronize(), "boom 7");
  CHECK(!later_ran);
  s->synchronize();  // reported once; the stream is usable again
  int ran = 0;
  s->enqueue([&ran] { ran = 1; });
  s->synchronize();
  CHECK(ran == 1);
}

void test_exceptions() {
  check_exceptions(true);
  check_exceptions(false);
  auto s = make_cpu_stream("s", true);
  CHECK_THROWS_WITH(s->enqueue(std::function<void()>()), "empty function");
}

void test_never_recorded_event() {
  auto e = make_cpu_event();
  CHECK(e->query());
  auto t0 = Clock::now();
  e->synchronize();
  CHECK(ms_since(t0) < 5.0);
  CHECK(e->completed_at_ms() == 0.0);
  auto in = make_cpu_stream("in", false);
  auto w = make_cpu_stream("w", true);
  in->wait(*e);
  w->wait(*e);
  w->synchronize();
  CHECK(in->waited_ms() == 0.0);
  CHECK(w->waited_ms() == 0.0);
}

void test_rerecord_resets() {
  auto w = make_cpu_stream("w", true);
  auto e = make_cpu_event();
  w->record(*e);
  w->synchronize();
  CHECK(e->query());
  double first = e->completed_at_ms();
  Gate gate;
  gate.block_stream(*w);
  w->record(*e);
  CHECK(!e->query());  // pending again from the moment of the re-record
  CHECK_THROWS_WITH(e->completed_at_ms(), "not completed");
  gate.open.set_value();
  e->synchronize();
  CHECK(e->query());
  CHECK(e->completed_at_ms() >= first);
}

// A wait() keeps the recording it saw: re-recording the event afterwards does not release it.
void test_wait_captures_recording() {
  auto a = make_cpu_stream("a", true);
  auto b = make_cpu_stream("b", true);
  auto in = make_cpu_stream("in", false);
  auto e = make_cpu_event();
  Gate gate;
  gate.block_stream(*a);
  a->record(*e);
  b->wait(*e);
  std::promise<void> b_ran;
  auto b_done = b_ran.get_future();
  b->enqueue([&b_ran] { b_ran.set_value(); });
  in->record(*e);  // a newer recording, complete at once
  CHECK(e->query());
  CHECK(b_done.wait_for(std::chrono::milliseconds(30)) == std::future_status::timeout);
  gate.open.set_value();
  b->synchronize();
  CHECK(b_done.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
  a->synchronize();
}

void test_destructor_drains() {
  int count = 0;  // read after the destructor has joined the worker
  auto s = make_cpu_stream("s", true);
  for (int i = 0; i < 10; ++i)
    s->enqueue([&count] {
      sleep_ms(5);
      ++count;
    });
  s.reset();
  CHECK(count == 10);
}

// An event recorded on a worker may be destroyed before its marker runs (CUDA allows it).
void test_event_destroyed_while_pending() {
  auto s = make_cpu_stream("s", true);
  Gate gate;
  gate.block_stream(*s);
  {
    auto e = make_cpu_event();
    s->record(*e);
  }
  gate.open.set_value();
  s->synchronize();
  CHECK(true);
}

struct ForeignEvent : Event {
  bool query() const override { return true; }
  void synchronize() override {}
  double completed_at_ms() const override { return 0.0; }
};

void test_foreign_event_rejected() {
  auto s = make_cpu_stream("s", true);
  ForeignEvent f;
  CHECK_THROWS_WITH(s->record(f), "not a CPU event");
  CHECK_THROWS_WITH(s->wait(f), "not a CPU event");
}

}  // namespace

int main() {
  test_fifo_order();
  test_record_wait_across_streams();
  test_worker_wait_counts_time();
  test_cross_dependency();
  test_overlap_is_real();
  test_exceptions();
  test_never_recorded_event();
  test_rerecord_resets();
  test_wait_captures_recording();
  test_destructor_drains();
  test_event_destroyed_while_pending();
  test_foreign_event_rejected();
  TEST_MAIN_END();
}
