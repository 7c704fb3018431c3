// The CUDA host-to-device link for expert offloading (see expert_link.h).
#include "kernels/cuda/expert_link.h"

#include <cstdio>
#include <exception>
#include <vector>

#include "core/check.h"
#include "kernels/cuda/device_memory.h"
#include "kernels/cuda/runtime.h"

SCMOE_CUDA_BEGIN

namespace {

// A slot's "copy done" event (no timing: the cheapest kind to record and wait on).
class CopyEvent : public Event {
 public:
  CopyEvent() : ev_(event_create(false)) {}
  ~CopyEvent() override { event_destroy(ev_); }
  bool query() const override { return event_query(ev_); }
  void synchronize() override { event_synchronize(ev_); }
  double completed_at_ms() const override { return 0; }  // not tracked: the link times copies with spans
  event_t get() const { return ev_; }

 private:
  event_t ev_;
};

class CudaExpertLink : public ExpertLink {
 public:
  explicit CudaExpertLink(cudaStream_t compute)
      : compute_(compute), copy_(stream_create(false)), compute_mark_(event_create(false)) {}
  ~CudaExpertLink() override {
    try {
      stream_synchronize(copy_);
      stream_synchronize(compute_);
    } catch (const std::exception& e) {  // a destructor cannot throw; the error was reported (or is lost)
      std::fprintf(stderr, "warning: expert link: waiting for its copies failed: %s\n", e.what());
    }
    for (const Span& s : copies_) release(s);
    for (const Wait& w : waits_) release(w.span);
    for (event_t e : pool_) event_destroy(e);
    event_destroy(compute_mark_);
    stream_destroy(copy_);
  }

  // The copy may overwrite a slot that kernels queued earlier on the compute stream still read (the
  // expert it held before): it starts only after the compute work queued so far. Requests come right
  // after a gate's host synchronisation (async, speculative), when that queue is empty, or at the
  // point of use (blocking), where waiting is the point.
  void copy(void* dst, const void* src, size_t bytes, Event& done) override {
    event_record(compute_mark_, compute_);
    stream_wait_event(copy_, compute_mark_);
    const Span s = span();
    event_record(s.begin, copy_);
    memcpy_async(dst, src, bytes, CopyKind::host_to_device, copy_);
    event_record(s.end, copy_);
    event_record(static_cast<CopyEvent&>(done).get(), copy_);
    copies_.push_back(s);
  }
  // The compute stream waits on the device; the events around the wait time the stall (none when the
  // copy is already done).
  void wait(Event& done, double* exposed_ms) override {
    if (done.query()) return;
    const Span s = span();
    event_record(s.begin, compute_);
    stream_wait_event(compute_, static_cast<CopyEvent&>(done).get());
    event_record(s.end, compute_);
    waits_.push_back({s, exposed_ms});
  }
  void settle() override {
    harvest_copies();
    std::vector<Wait> pending;
    for (const Wait& w : waits_) {
      if (!done(w.span.end)) {
        pending.push_back(w);
        continue;
      }
      *w.exposed_ms += elapsed(w.span);
      release(w.span);
    }
    waits_.swap(pending);
  }
  std::unique_ptr<Event> make_event() override { return std::make_unique<CopyEvent>(); }
  void* alloc(size_t bytes, const std::string& what) override { return device_alloc(bytes, what); }
  void free(void* p) override { device_free(p); }
  size_t alignment() const override { return 256; }
  void synchronize() override {
    stream_synchronize(copy_);
    harvest_copies();
  }
  double busy_ms() const override { return busy_ms_; }
  std::string describe() const override { return "PCIe: cudaMemcpyAsync from pinned memory on a copy stream"; }

 private:
  struct Span {
    event_t begin, end;
  };
  struct Wait {
    Span span;
    double* exposed_ms;
  };
  Span span() {
    Span s;
    s.begin = take(), s.end = take();
    return s;
  }
  event_t take() {
    if (pool_.empty()) return event_create(true);
    event_t e = pool_.back();
    pool_.pop_back();
    return e;
  }
  void release(const Span& s) { pool_.push_back(s.begin), pool_.push_back(s.end); }
  static bool done(event_t e) { return event_query(e); }
  static double elapsed(const Span& s) { return event_elapsed_ms(s.begin, s.end); }
  // Copies finish in order on the one copy stream: take the finished prefix.
  void harvest_copies() {
    size_t n = 0;
    while (n < copies_.size() && done(copies_[n].end)) {
      busy_ms_ += elapsed(copies_[n]);
      release(copies_[n]);
      n++;
    }
    copies_.erase(copies_.begin(), copies_.begin() + long(n));
  }

  cudaStream_t compute_, copy_;
  event_t compute_mark_;  // the compute stream's progress when a copy was issued
  std::vector<event_t> pool_;
  std::vector<Span> copies_;
  std::vector<Wait> waits_;
  double busy_ms_ = 0;
};

}  // namespace

std::unique_ptr<ExpertLink> make_cuda_expert_link(cudaStream_t compute) {
  return std::make_unique<CudaExpertLink>(compute);
}

SCMOE_CUDA_END
