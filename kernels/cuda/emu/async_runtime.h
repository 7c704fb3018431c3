// An asynchronous CUDA runtime for the SIMT emulation (docs/design.md section 5, "Stream ordering without a
// GPU"): what kernels/cuda/runtime.h's calls do when the CUDA backend is compiled as host C++.
//   streams  a worker thread each, running its queue in order: kernels (on the stream's thread, whose
//            emulator state is its own), copies, host functions, event markers and waits;
//   events   a recording completes when its stream reaches it; a wait made after it blocks that stream
//            until then (a later re-record does not change what an earlier wait waits for);
//   copies   asynchronous, except that a host-to-device copy reads its source during the call (CUDA
//            stages pageable memory the same way), so the caller may reuse it at once;
//   delays   before each piece of stream work a stream may sleep a random while (seeded: every stream
//            draws from its own generator), so that work a missing wait fails to order runs in the wrong
//            order and gives a wrong result. SCMOE_EMU_DELAY_US (the longest sleep, default 200; 0 turns
//            them off), SCMOE_EMU_DELAY_PERCENT (how often, default 30) and SCMOE_EMU_SEED, or
//            set_delays() from a test.
// The null stream is the legacy default stream, run on the calling thread at once (the kernel suites).
// A failure inside stream work (a kernel the emulator rejects, a host function that throws) is kept and
// rethrown by the next synchronisation, as CUDA's sticky errors are; later work still runs its markers.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

struct CUstream_st;
struct CUevent_st;

namespace simt::rt {

struct Delays {
  uint64_t seed = 1;
  int max_us = 200;
  int percent = 30;
};
inline Delays& delays() {
  static Delays d = [] {
    Delays x;
    if (const char* s = std::getenv("SCMOE_EMU_DELAY_US")) x.max_us = std::atoi(s);
    if (const char* s = std::getenv("SCMOE_EMU_DELAY_PERCENT")) x.percent = std::atoi(s);
    if (const char* s = std::getenv("SCMOE_EMU_SEED")) x.seed = std::strtoull(s, nullptr, 10);
    return x;
  }();
  return d;
}
// For tests: streams created afterwards use these (seed: the first stream's; later ones derive theirs).
inline void set_delays(uint64_t seed, int max_us, int percent) { delays() = {seed, max_us, percent}; }

inline double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// One recording of an event.
struct Point {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  double at_ms = 0;
  void complete() {
    std::lock_guard<std::mutex> lock(m);
    done = true, at_ms = now_ms();
    cv.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [this] { return done; });
  }
  bool is_done() {
    std::lock_guard<std::mutex> lock(m);
    return done;
  }
};

struct Event {
  std::mutex m;
  std::shared_ptr<Point> point;  // null: never recorded (complete)
  std::shared_ptr<Point> current() {
    std::lock_guard<std::mutex> lock(m);
    return point;
  }
  std::shared_ptr<Point> rearm() {
    auto p = std::make_shared<Point>();
    std::lock_guard<std::mutex> lock(m);
    point = p;
    return p;
  }
};

// The first failure of any stream's work, rethrown by the next synchronisation.
struct Sticky {
  std::mutex m;
  std::exception_ptr error;
};
inline Sticky& sticky() {
  static Sticky s;
  return s;
}
inline void keep_error(std::exception_ptr e) {
  std::lock_guard<std::mutex> lock(sticky().m);
  if (!sticky().error) sticky().error = e;
}
inline void rethrow_error() {
  std::exception_ptr e;
  {
    std::lock_guard<std::mutex> lock(sticky().m);
    std::swap(e, sticky().error);
  }
  if (e) std::rethrow_exception(e);
}
inline bool has_error() {
  std::lock_guard<std::mutex> lock(sticky().m);
  return sticky().error != nullptr;
}

class Stream {
 public:
  Stream(uint64_t seed, const Delays& d) : rng_(seed), max_us_(d.max_us), percent_(d.percent) {
    thread_ = std::thread([this] { loop(); });
  }
  ~Stream() {
    synchronize();
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    work_.notify_one();
    thread_.join();
  }
  // work: skipped after a failure (its inputs may be garbage); markers and waits always run.
  void push(std::function<void()> fn, bool is_work = true) {
    {
      std::lock_guard<std::mutex> lock(m_);
      queue_.push_back({std::move(fn), is_work});
    }
    work_.notify_one();
  }
  void synchronize() {
    std::unique_lock<std::mutex> lock(m_);
    idle_.wait(lock, [this] { return queue_.empty() && !busy_; });
  }

 private:
  struct Item {
    std::function<void()> fn;
    bool is_work;
  };
  void loop() {
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      work_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      Item item = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      const bool sleep = max_us_ > 0 && int(rng_() % 100) < percent_;
      const int us = sleep ? int(rng_() % uint64_t(max_us_)) : 0;
      lock.unlock();
      if (us > 0) std::this_thread::sleep_for(std::chrono::microseconds(us));
      if (!item.is_work || !has_error()) {
        try {
          item.fn();
        } catch (...) {
          keep_error(std::current_exception());
        }
      }
      item.fn = nullptr;
      lock.lock();
      busy_ = false;
      if (queue_.empty()) idle_.notify_all();
    }
  }
  std::mutex m_;
  std::condition_variable work_, idle_;
  std::deque<Item> queue_;
  bool busy_ = false, stop_ = false;
  std::mt19937_64 rng_;
  int max_us_, percent_;
  std::thread thread_;  // last: starts after the state above exists
};

// Live streams (device_synchronize waits for all) and how many were made (each gets its own seed).
struct Registry {
  std::mutex m;
  std::set<Stream*> live;
  uint64_t made = 0;
};
inline Registry& registry() {
  static Registry r;
  return r;
}

inline Stream* as_stream(CUstream_st* s) { return reinterpret_cast<Stream*>(s); }
inline Event* as_event(CUevent_st* e) { return reinterpret_cast<Event*>(e); }

inline CUstream_st* stream_create(bool /*high_priority: one "device", no scheduler to prefer it*/) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.m);
  const Delays d = delays();
  auto* s = new Stream(d.seed * 0x9E3779B97F4A7C15ull + r.made++, d);
  r.live.insert(s);
  return reinterpret_cast<CUstream_st*>(s);
}
inline void stream_destroy(CUstream_st* s) {
  if (!s) return;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.m);
    r.live.erase(as_stream(s));
  }
  delete as_stream(s);
}
// Runs fn in s's order (the null stream: now, on this thread).
inline void enqueue(CUstream_st* s, std::function<void()> fn) {
  if (!s) return fn();
  as_stream(s)->push(std::move(fn));
}
inline void stream_synchronize(CUstream_st* s) {
  if (s) as_stream(s)->synchronize();
  rethrow_error();
}
inline void device_synchronize() {
  std::vector<Stream*> all;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.m);
    all.assign(r.live.begin(), r.live.end());
  }
  for (Stream* s : all) s->synchronize();
  rethrow_error();
}
inline CUevent_st* event_create(bool) { return reinterpret_cast<CUevent_st*>(new Event); }
inline void event_destroy(CUevent_st* e) { delete as_event(e); }
inline void event_record(CUevent_st* e, CUstream_st* s) {
  std::shared_ptr<Point> p = as_event(e)->rearm();
  if (!s) return p->complete();
  as_stream(s)->push([p] { p->complete(); }, /*is_work=*/false);
}
// Work queued on s after this call waits for the recording of e current now.
inline void stream_wait_event(CUstream_st* s, CUevent_st* e) {
  std::shared_ptr<Point> p = as_event(e)->current();
  if (!p) return;
  if (!s) return p->wait();
  as_stream(s)->push([p] { p->wait(); }, /*is_work=*/false);
}
inline bool event_query(CUevent_st* e) {
  std::shared_ptr<Point> p = as_event(e)->current();
  return !p || p->is_done();
}
inline void event_synchronize(CUevent_st* e) {
  if (std::shared_ptr<Point> p = as_event(e)->current()) p->wait();
  rethrow_error();
}
inline float event_elapsed_ms(CUevent_st* start, CUevent_st* end) {
  std::shared_ptr<Point> a = as_event(start)->current(), b = as_event(end)->current();
  if (!a || !b || !a->is_done() || !b->is_done())
    throw std::runtime_error("event_elapsed_ms: an event has not completed (cudaErrorNotReady)");
  return float(b->at_ms - a->at_ms);
}
inline void memcpy_async(void* dst, const void* src, size_t bytes, bool from_host, CUstream_st* s) {
  if (!bytes) return;
  if (!from_host) return enqueue(s, [=] { std::memmove(dst, src, bytes); });
  auto staged = std::make_shared<std::vector<char>>(static_cast<const char*>(src), static_cast<const char*>(src) + bytes);
  enqueue(s, [dst, staged] { std::memcpy(dst, staged->data(), staged->size()); });
}
inline void memset_async(void* dst, int value, size_t bytes, CUstream_st* s) {
  if (bytes) enqueue(s, [=] { std::memset(dst, value, bytes); });
}
inline void memcpy_sync(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memmove(dst, src, bytes);
}
inline void launch_host_func(CUstream_st* s, void (*fn)(void*), void* data) {
  enqueue(s, [fn, data] { fn(data); });
}

}  // namespace simt::rt
