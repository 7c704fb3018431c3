// Cross-stream ordering of the schedule and its timing, shared by the model and its dispatchers.
//   WaitCounter  every cross-stream wait of a micro-step (a stream waiting on an event recorded on the
//                other one) goes through wait(), which numbers it. A debug switch (environment variable
//                SCMOE_DEBUG_DROP_WAIT=k, or set_drop_wait(k)) skips the k-th wait of every micro-step:
//                the mutation test (emu_stream_mutation) proves that each wait is needed by showing
//                that dropping it changes the result under the emulated runtime's random delays.
//   Timeline     timing events recorded on either stream during a micro-step, read after the streams
//                are synchronised: durations from the events' own clocks (the device's on CUDA), and
//                host times for the trace relative to an event recorded when the step began.
#pragma once
#include <cstdlib>
#include <memory>
#include <vector>

#include "core/stream.h"
#include "core/trace.h"

namespace scmoe {

class WaitCounter {
 public:
  // -1: no wait is dropped (the default unless SCMOE_DEBUG_DROP_WAIT is set).
  static void set_drop_wait(int k) { drop_index() = k; }
  static int drop_wait() { return drop_index(); }
  void reset() { count_ = 0; }
  // `waiter` waits for `e` (a no-op when they are the same stream: it runs in order anyway).
  void wait(Stream& waiter, Stream& recorder, Event& e) {
    if (&waiter == &recorder) return;
    if (count_++ == drop_index()) return;
    waiter.wait(e);
  }
  int count() const { return count_; }

 private:
  static int& drop_index() {
    static int k = [] {
      const char* s = std::getenv("SCMOE_DEBUG_DROP_WAIT");
      return s && *s ? std::atoi(s) : -1;
    }();
    return k;
  }
  int count_ = 0;
};

template <class B>
class Timeline {
 public:
  explicit Timeline(B& k) : k_(&k) {}
  // Starts a micro-step's timeline on the compute stream; earlier marks are forgotten.
  void start(Stream& compute) {
    used_ = 0;
    ref_us_ = Tracer::now_us();
    ref_ = mark(compute);
  }
  // A timing event recorded on s now (in s's order).
  Event* mark(Stream& s) {
    if (used_ == pool_.size()) pool_.push_back(k_->make_event(true));
    Event* e = pool_[used_++].get();
    s.record(*e);
    return e;
  }
  // After the streams are synchronised: milliseconds between two marks, and a mark's host time (us).
  static double ms(const Event* from, const Event* to) { return to->elapsed_ms(*from); }
  double host_us(const Event* e) const { return ref_us_ + e->elapsed_ms(*ref_) * 1000.0; }
  bool started() const { return ref_ != nullptr; }

 private:
  B* k_;
  std::vector<std::unique_ptr<Event>> pool_;
  size_t used_ = 0;
  Event* ref_ = nullptr;
  double ref_us_ = 0;
};

}  // namespace scmoe
