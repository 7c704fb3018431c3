// CPU streams and events with CUDA semantics: an inline stream runs work on the caller's thread, a
// worker stream runs it in order on its own thread, and events order work across streams.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

#include <omp.h>

#include "core/check.h"
#include "core/log.h"
#include "core/stream.h"

namespace scmoe {
namespace {

using Clock = std::chrono::steady_clock;

double now_ms() { return std::chrono::duration<double, std::milli>(Clock::now().time_since_epoch()).count(); }

// One recording of an event. Each record() makes a fresh point, so a wait() issued before a re-record
// keeps waiting for the recording it saw, as cudaStreamWaitEvent does. Points are shared with the
// queued marker, so destroying an event with a pending record is safe (CUDA allows that too).
class Point {
 public:
  void complete() {
    std::lock_guard<std::mutex> lock(m_);
    done_ = true;
    at_ms_ = now_ms();
    cv_.notify_all();
  }
  bool done() const {
    std::lock_guard<std::mutex> lock(m_);
    return done_;
  }
  void block_until_done() const {
    std::unique_lock<std::mutex> lock(m_);
    cv_.wait(lock, [this] { return done_; });
  }
  // Returns false while pending, so the caller can report the misuse.
  bool completed_at(double* ms) const {
    std::lock_guard<std::mutex> lock(m_);
    *ms = at_ms_;
    return done_;
  }

 private:
  mutable std::mutex m_;
  mutable std::condition_variable cv_;
  bool done_ = false;
  double at_ms_ = 0.0;
};

using PointPtr = std::shared_ptr<Point>;

class CpuEvent : public Event {
 public:
  bool query() const override {
    PointPtr p = current();
    return !p || p->done();
  }
  void synchronize() override {
    if (PointPtr p = current()) p->block_until_done();
  }
  // A never-recorded event has no completion time; 0 keeps "not timed" distinguishable from any real
  // steady-clock stamp. Asking a pending event is a logic error (CUDA answers cudaErrorNotReady).
  double completed_at_ms() const override {
    PointPtr p = current();
    if (!p) return 0.0;
    double ms = 0.0;
    SCMOE_CHECK(p->completed_at(&ms),
                "Event::completed_at_ms: the event's recorded work has not completed "
                "yet (synchronize the event or its stream first)");
    return ms;
  }

  // Starts a new recording: the event is pending until the returned point is completed.
  PointPtr rearm() {
    auto p = std::make_shared<Point>();
    std::lock_guard<std::mutex> lock(m_);
    point_ = p;
    return p;
  }
  // The recording a wait() issued now must wait for; null when never recorded (already complete).
  PointPtr current() const {
    std::lock_guard<std::mutex> lock(m_);
    return point_;
  }

 private:
  // Guards only the pointer swap; never held while taking a Point's mutex, so no lock order exists.
  mutable std::mutex m_;
  PointPtr point_;
};

CpuEvent& as_cpu_event(Event& e) {
  auto* c = dynamic_cast<CpuEvent*>(&e);
  SCMOE_CHECK(c, "CPU stream given an event that is not a CPU event (make it with make_cpu_event)");
  return *c;
}

// What both CPU streams share: name, blocked-time accounting and the first captured exception.
// After a task throws, later tasks are skipped until synchronize() reports the error (like CUDA's
// sticky errors), because they would consume the failed task's output; record() markers and waits
// still run, so other streams waiting on this one cannot deadlock.
class CpuStreamBase : public Stream {
 public:
  explicit CpuStreamBase(std::string name) : name_(std::move(name)) {}
  // Runs after a worker's thread has joined, so no task can still be capturing an error.
  ~CpuStreamBase() override { report_unclaimed_error(); }
  const std::string& name() const override { return name_; }
  // Atomic so another thread may read it at any time, not only after synchronize().
  double waited_ms() const override { return waited_ns_.load(std::memory_order_relaxed) * 1e-6; }
  void reset_waited() override { waited_ns_.store(0, std::memory_order_relaxed); }

 protected:
  // Blocks the current thread until p completes, counting the time as this stream's waiting.
  void block_on(const PointPtr& p, bool spin = false) {
    if (!p || p->done()) return;
    auto t0 = Clock::now();
    if (spin) {
      while (!p->done()) std::this_thread::yield();
    } else {
      p->block_until_done();
    }
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
    waited_ns_.fetch_add(static_cast<int64_t>(ns), std::memory_order_relaxed);
  }
  // Runs fn unless an earlier task failed and that failure has not been reported yet.
  void run_task(const std::function<void()>& fn) {
    if (has_error()) return;
    try {
      fn();
    } catch (...) {
      keep_first_error(std::current_exception());
    }
  }
  // Rethrows (once) the first exception captured since the last report.
  void report_error() {
    std::exception_ptr e;
    {
      std::lock_guard<std::mutex> lock(err_m_);
      std::swap(e, error_);
    }
    if (e) std::rethrow_exception(e);
  }
  static void check_task(const std::function<void()>& fn, const std::string& name) {
    SCMOE_CHECK(fn, "stream '" << name << "': enqueue of an empty function");
  }

 private:
  // A destructor cannot throw, so an error nobody synchronized for is at least not silent.
  void report_unclaimed_error() noexcept {
    try {
      report_error();
    } catch (const std::exception& e) {
      log_warn("stream '%s' destroyed with an unreported task error: %s", name().c_str(), e.what());
    } catch (...) {
      log_warn("stream '%s' destroyed with an unreported task error of unknown type", name().c_str());
    }
  }

  bool has_error() const {
    std::lock_guard<std::mutex> lock(err_m_);
    return error_ != nullptr;
  }
  void keep_first_error(std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(err_m_);
    if (!error_) error_ = std::move(e);
  }

  std::string name_;
  std::atomic<int64_t> waited_ns_{0};
  mutable std::mutex err_m_;
  std::exception_ptr error_;
};

// The compute stream: work runs at once on the calling thread, so there is no queue to drain.
class InlineStream : public CpuStreamBase {
 public:
  using CpuStreamBase::CpuStreamBase;
  void enqueue(std::function<void()> fn) override {
    check_task(fn, name());
    run_task(fn);
  }
  void record(Event& e) override { as_cpu_event(e).rearm()->complete(); }
  // Yield-spins (see make_cpu_stream): the compute thread resumes at once when the event completes.
  void wait(Event& e) override { block_on(as_cpu_event(e).current(), /*spin=*/true); }
  void synchronize() override { report_error(); }
};

// A side stream: one thread runs a FIFO of tasks, markers and waits in the order they were enqueued.
class WorkerStream : public CpuStreamBase {
 public:
  WorkerStream(std::string name, int poll_us)
      : CpuStreamBase(std::move(name)), poll_us_(poll_us), thread_([this] { loop(); }) {}

  ~WorkerStream() override {
    drain();
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    work_cv_.notify_one();
    thread_.join();
  }

  void enqueue(std::function<void()> fn) override {
    check_task(fn, name());
    push([this, fn = std::move(fn)] { run_task(fn); });
  }
  // The event turns pending now (host order), and completes when the worker reaches the marker.
  void record(Event& e) override {
    PointPtr p = as_cpu_event(e).rearm();
    push([p] { p->complete(); });
  }
  // Captures the recording current at call time; later re-records do not affect this wait.
  void wait(Event& e) override {
    PointPtr p = as_cpu_event(e).current();
    if (!p) return;  // never recorded: complete, nothing to wait for
    push([this, p] { block_on(p); });
  }
  void synchronize() override {
    drain();
    report_error();
  }

 private:
  void push(std::function<void()> item) {
    {
      std::lock_guard<std::mutex> lock(m_);
      queue_.push_back(std::move(item));
    }
    work_cv_.notify_one();
  }

  // Waits until every queued item has run, including the one in progress.
  void drain() {
    std::unique_lock<std::mutex> lock(m_);
    idle_cv_.wait(lock, [this] { return queue_.empty() && !busy_; });
  }

  void loop() {
    // A side stream moves data (copies, collectives); the OpenMP loops it meets (ops::copy) would
    // otherwise start a team of their own, as wide as the machine, whose spinning threads take the
    // cores the compute thread is using. (The setting is per thread: compute keeps its own.)
    omp_set_num_threads(1);
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      // Optionally poll (yielding) for poll_us_ before sleeping; see make_cpu_stream for when it pays.
      for (auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(poll_us_);
           poll_us_ > 0 && queue_.empty() && !stop_ && std::chrono::steady_clock::now() < until;) {
        lock.unlock();
        std::this_thread::yield();
        lock.lock();
      }
      work_cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ set and nothing left
      std::function<void()> item = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      lock.unlock();
      item();          // never throws: run_task captures user exceptions
      item = nullptr;  // release captures (events, user state) before reporting idle
      lock.lock();
      busy_ = false;
      if (queue_.empty()) idle_cv_.notify_all();
    }
  }

  const int poll_us_;
  std::mutex m_;
  std::condition_variable work_cv_;  // worker: an item arrived or stop
  std::condition_variable idle_cv_;  // host: queue drained and nothing running
  std::deque<std::function<void()>> queue_;
  bool busy_ = false;
  bool stop_ = false;
  std::thread thread_;  // last member: starts after the state above is constructed
};

}  // namespace

std::unique_ptr<Stream> make_cpu_stream(const std::string& name, bool worker_thread, int poll_us) {
  if (worker_thread) return std::make_unique<WorkerStream>(name, poll_us);
  return std::make_unique<InlineStream>(name);
}

std::unique_ptr<Event> make_cpu_event() { return std::make_unique<CpuEvent>(); }

}  // namespace scmoe
