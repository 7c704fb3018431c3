// The CUDA host-to-device link for expert offloading (see expert_link_cuda.h).
#include "model/expert_link_cuda.h"

#if !defined(SCMOE_SIMT_EMU)
#include <cuda_runtime.h>

#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device_memory.h"

SCMOE_CUDA_BEGIN

namespace {

// A slot's "copy done" event (no timing: the cheapest kind to record and wait on).
class CopyEvent : public Event {
 public:
  CopyEvent() { SCMOE_CUDA_CHECK(cudaEventCreateWithFlags(&ev_, cudaEventDisableTiming)); }
  ~CopyEvent() override { cudaEventDestroy(ev_); }
  bool query() const override {
    const cudaError_t e = cudaEventQuery(ev_);
    if (e == cudaErrorNotReady) return false;
    SCMOE_CUDA_CHECK(e);
    return true;
  }
  void synchronize() override { SCMOE_CUDA_CHECK(cudaEventSynchronize(ev_)); }
  double completed_at_ms() const override { return 0; }  // not tracked: the link times copies with spans
  cudaEvent_t get() const { return ev_; }

 private:
  cudaEvent_t ev_{};
};

class CudaExpertLink : public ExpertLink {
 public:
  explicit CudaExpertLink(cudaStream_t compute) : compute_(compute) {
    SCMOE_CUDA_CHECK(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking));
    SCMOE_CUDA_CHECK(cudaEventCreateWithFlags(&compute_mark_, cudaEventDisableTiming));
  }
  ~CudaExpertLink() override {
    cudaStreamSynchronize(copy_);
    cudaStreamSynchronize(compute_);
    for (const Span& s : copies_) release(s);
    for (const Wait& w : waits_) release(w.span);
    for (cudaEvent_t e : pool_) cudaEventDestroy(e);
    cudaEventDestroy(compute_mark_);
    cudaStreamDestroy(copy_);
  }

  // The copy may overwrite a slot that kernels queued earlier on the compute stream still read (the
  // expert it held before): it starts only after the compute work queued so far. Requests come right
  // after a gate's host synchronisation (async, speculative), when that queue is empty, or at the
  // point of use (blocking), where waiting is the point.
  void copy(void* dst, const void* src, size_t bytes, Event& done) override {
    SCMOE_CUDA_CHECK(cudaEventRecord(compute_mark_, compute_));
    SCMOE_CUDA_CHECK(cudaStreamWaitEvent(copy_, compute_mark_, 0));
    const Span s = span();
    SCMOE_CUDA_CHECK(cudaEventRecord(s.begin, copy_));
    SCMOE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, copy_));
    SCMOE_CUDA_CHECK(cudaEventRecord(s.end, copy_));
    SCMOE_CUDA_CHECK(cudaEventRecord(static_cast<CopyEvent&>(done).get(), copy_));
    copies_.push_back(s);
  }
  // The compute stream waits on the device; the events around the wait time the stall (none when the
  // copy is already done).
  void wait(Event& done, double* exposed_ms) override {
    if (done.query()) return;
    const Span s = span();
    SCMOE_CUDA_CHECK(cudaEventRecord(s.begin, compute_));
    SCMOE_CUDA_CHECK(cudaStreamWaitEvent(compute_, static_cast<CopyEvent&>(done).get(), 0));
    SCMOE_CUDA_CHECK(cudaEventRecord(s.end, compute_));
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
    SCMOE_CUDA_CHECK(cudaStreamSynchronize(copy_));
    harvest_copies();
  }
  double busy_ms() const override { return busy_ms_; }
  std::string describe() const override { return "PCIe: cudaMemcpyAsync from pinned memory on a copy stream"; }

 private:
  struct Span {
    cudaEvent_t begin, end;
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
  cudaEvent_t take() {
    if (pool_.empty()) {
      cudaEvent_t e;
      SCMOE_CUDA_CHECK(cudaEventCreate(&e));
      return e;
    }
    cudaEvent_t e = pool_.back();
    pool_.pop_back();
    return e;
  }
  void release(const Span& s) { pool_.push_back(s.begin), pool_.push_back(s.end); }
  static bool done(cudaEvent_t e) {
    const cudaError_t r = cudaEventQuery(e);
    if (r == cudaErrorNotReady) return false;
    SCMOE_CUDA_CHECK(r);
    return true;
  }
  static double elapsed(const Span& s) {
    float ms = 0;
    SCMOE_CUDA_CHECK(cudaEventElapsedTime(&ms, s.begin, s.end));
    return ms;
  }
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

  cudaStream_t compute_, copy_{};
  cudaEvent_t compute_mark_{};  // the compute stream's progress when a copy was issued
  std::vector<cudaEvent_t> pool_;
  std::vector<Span> copies_;
  std::vector<Wait> waits_;
  double busy_ms_ = 0;
};

}  // namespace

std::unique_ptr<ExpertLink> make_cuda_expert_link(cudaStream_t compute) {
  return std::make_unique<CudaExpertLink>(compute);
}

SCMOE_CUDA_END

#endif  // !SCMOE_SIMT_EMU
