// CUDA streams and events behind the Stream/Event interface (core/stream.h): record/wait/synchronize
// map to cudaEventRecord / cudaStreamWaitEvent / cudaStreamSynchronize, and enqueue() runs a host
// function in stream order (cudaLaunchHostFunc), so schedule code written against Stream runs on
// either backend. Every call is checked with file:line.
#include <cuda_runtime.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "core/check.h"
#include "core/stream.h"

#define SCMOE_CUDA_CHECK(call)                                                                           \
  do {                                                                                                   \
    cudaError_t err_ = (call);                                                                           \
    SCMOE_CHECK(err_ == cudaSuccess, #call << " failed: " << cudaGetErrorString(err_)                    \
                                            << " (is a CUDA device present and the driver recent enough?)"); \
  } while (0)

namespace scmoe {

namespace {

double host_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

class CudaEvent : public Event {
 public:
  CudaEvent() { SCMOE_CUDA_CHECK(cudaEventCreateWithFlags(&ev_, cudaEventDisableTiming)); }
  ~CudaEvent() override { cudaEventDestroy(ev_); }
  bool query() const override {
    cudaError_t e = cudaEventQuery(ev_);
    if (e == cudaErrorNotReady) return false;
    SCMOE_CUDA_CHECK(e);
    return true;
  }
  void synchronize() override {
    SCMOE_CUDA_CHECK(cudaEventSynchronize(ev_));
    done_ms_ = host_ms();
  }
  // The host time at which synchronize() saw the event complete (device timestamps are not host time).
  double completed_at_ms() const override { return done_ms_; }
  cudaEvent_t get() const { return ev_; }

 private:
  cudaEvent_t ev_{};
  double done_ms_ = 0;
};

class CudaStream : public Stream {
 public:
  explicit CudaStream(std::string name) : name_(std::move(name)) {
    SCMOE_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking));
  }
  ~CudaStream() override {
    cudaStreamSynchronize(s_);
    cudaStreamDestroy(s_);
  }
  void enqueue(std::function<void()> fn) override {
    auto* heap = new std::function<void()>(std::move(fn));
    SCMOE_CUDA_CHECK(cudaLaunchHostFunc(s_, &CudaStream::trampoline, heap));
  }
  void record(Event& e) override { SCMOE_CUDA_CHECK(cudaEventRecord(as_cuda(e).get(), s_)); }
  // Asynchronous on the device: nothing blocks on the host, so waited_ms() stays 0; exposed
  // communication on CUDA is measured with events around the waits instead.
  void wait(Event& e) override { SCMOE_CUDA_CHECK(cudaStreamWaitEvent(s_, as_cuda(e).get(), 0)); }
  void synchronize() override { SCMOE_CUDA_CHECK(cudaStreamSynchronize(s_)); }
  const std::string& name() const override { return name_; }
  double waited_ms() const override { return 0; }
  void reset_waited() override {}

 private:
  static void CUDART_CB trampoline(void* p) {
    std::unique_ptr<std::function<void()>> fn(static_cast<std::function<void()>*>(p));
    (*fn)();  // host functions must not throw into the driver; callers capture their own errors
  }
  static CudaEvent& as_cuda(Event& e) {
    auto* c = dynamic_cast<CudaEvent*>(&e);
    SCMOE_CHECK(c, "a CUDA stream was given an event not made by make_cuda_event()");
    return *c;
  }
  std::string name_;
  cudaStream_t s_{};
};

}  // namespace

std::unique_ptr<Stream> make_cuda_stream(const std::string& name) { return std::make_unique<CudaStream>(name); }
std::unique_ptr<Event> make_cuda_event() { return std::make_unique<CudaEvent>(); }

}  // namespace scmoe
