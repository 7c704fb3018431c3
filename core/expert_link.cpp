// The CPU backend's (simulated) host-to-device link (see expert_link.h).
#include "core/expert_link.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "core/check.h"

namespace scmoe {

namespace {
using Clock = std::chrono::steady_clock;
}  // namespace

HostLink::HostLink(double gb_s, double latency_us)
    : gb_s_(gb_s), latency_us_(latency_us), stream_(make_cpu_stream("copy", true, /*poll_us=*/2000)) {}

HostLink::~HostLink() {
  try {
    stream_->synchronize();
  } catch (...) {  // a memcpy does not throw; nothing to report from a destructor anyway
  }
}

// The simulated link is a timeline, as a DMA engine is: a transfer starts when it is issued or when the
// previous one ends, whichever is later, and ends a transfer time after that. Taking the times at
// issue rather than when the worker thread gets a core keeps scheduling delays out of the model.
void HostLink::copy(void* dst, const void* src, size_t bytes, Event& done) {
  Clock::time_point start = Clock::now(), end = start;
  if (simulated()) {
    const double s = latency_us_ * 1e-6 + (gb_s_ > 0 ? double(bytes) / (gb_s_ * 1e9) : 0.0);
    start = std::max(start, free_at_);
    end = free_at_ = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  }
  stream_->enqueue([this, dst, src, bytes, start, end] {
    std::memcpy(dst, src, bytes);
    // Sleep most of the rest, then yield-spin: a sleep overshoots by ~0.1 ms, a large part of a transfer.
    if (end - Clock::now() > std::chrono::microseconds(300))
      std::this_thread::sleep_until(end - std::chrono::microseconds(200));
    while (Clock::now() < end) std::this_thread::yield();
    busy_ns_.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count(),
                       std::memory_order_relaxed);
  });
  stream_->record(done);
}

// Yield-spin rather than block: a blocked compute thread wakes up late behind OpenMP's spinning pool
// threads (see make_cpu_stream), which would count as exposed time that a GPU would not have.
void HostLink::wait(Event& e, double* exposed_ms) {
  if (e.query()) return;
  const auto t0 = Clock::now();
  while (!e.query()) std::this_thread::yield();
  *exposed_ms += std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

std::string HostLink::describe() const {
  if (!simulated()) return "host link: memcpy on a copy thread (not simulated)";
  char buf[96];
  std::snprintf(buf, sizeof buf, "host link %.3g GB/s + %.3g us (simulated)", gb_s_, latency_us_);
  return buf;
}

void* HostLink::alloc(size_t bytes, const std::string& what) {
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  SCMOE_CHECK(p, "out of memory allocating " << what << " (" << bytes << " bytes)");
  return p;
}

}  // namespace scmoe
