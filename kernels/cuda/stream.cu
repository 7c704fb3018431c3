// CUDA streams and events (see stream.h).
#include "kernels/cuda/stream.h"

#include <chrono>
#include <exception>
#include <functional>
#include <mutex>

#include "core/check.h"
#include "kernels/cuda/runtime.h"

SCMOE_CUDA_BEGIN

namespace {

class CudaEvent : public Event {
 public:
  explicit CudaEvent(bool timing) : ev_(event_create(timing)), timing_(timing) {}
  ~CudaEvent() override { event_destroy(ev_); }
  bool query() const override { return event_query(ev_); }
  void synchronize() override {
    event_synchronize(ev_);
    done_ms_ = host_ms();
  }
  // The host time at which synchronize() saw the event complete (device timestamps are not host time).
  double completed_at_ms() const override { return done_ms_; }
  double elapsed_ms(const Event& start) const override {
    const auto* s = dynamic_cast<const CudaEvent*>(&start);
    SCMOE_CHECK(s && s->timing_ && timing_, "Event::elapsed_ms needs two timing events of the CUDA backend");
    return event_elapsed_ms(s->ev_, ev_);
  }
  event_t get() const { return ev_; }

 private:
  static double host_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
  }
  event_t ev_;
  bool timing_;
  double done_ms_ = 0;
};

CudaEvent& as_cuda(Event& e) {
  auto* c = dynamic_cast<CudaEvent*>(&e);
  SCMOE_CHECK(c, "a CUDA stream was given an event not made by cuda::make_event()");
  return *c;
}

class CudaStream : public Stream {
 public:
  CudaStream(std::string name, bool high_priority) : name_(std::move(name)), s_(stream_create(high_priority)) {}
  ~CudaStream() override {
    try {
      stream_synchronize(s_);
    } catch (...) {  // reported (or lost with the process) elsewhere: a destructor cannot throw
    }
    stream_destroy(s_);
  }
  // A host function in stream order. It must not call the CUDA runtime; its exception is kept and
  // rethrown by the next synchronize() (a host function cannot throw into the driver).
  void enqueue(std::function<void()> fn) override {
    SCMOE_CHECK(fn, "stream '" << name_ << "': enqueue of an empty function");
    auto* heap = new Task{std::move(fn), this};
    launch_host_func(s_, &CudaStream::trampoline, heap);
  }
  void record(Event& e) override { event_record(as_cuda(e).get(), s_); }
  // Asynchronous on the device: the host does not block, so waited_ms() stays 0; exposed communication
  // on CUDA is measured with timing events around the waits.
  void wait(Event& e) override { stream_wait_event(s_, as_cuda(e).get()); }
  void synchronize() override {
    stream_synchronize(s_);
    std::exception_ptr err;
    {
      std::lock_guard<std::mutex> lock(m_);
      std::swap(err, error_);
    }
    if (err) std::rethrow_exception(err);
  }
  const std::string& name() const override { return name_; }
  double waited_ms() const override { return 0; }
  void reset_waited() override {}
  void* native_handle() const override { return s_; }

 private:
  struct Task {
    std::function<void()> fn;
    CudaStream* self;
  };
  static void trampoline(void* p) {
    std::unique_ptr<Task> t(static_cast<Task*>(p));
    try {
      t->fn();
    } catch (...) {
      std::lock_guard<std::mutex> lock(t->self->m_);
      if (!t->self->error_) t->self->error_ = std::current_exception();
    }
  }
  std::string name_;
  cudaStream_t s_;
  std::mutex m_;
  std::exception_ptr error_;
};

}  // namespace

std::unique_ptr<Stream> make_stream(const std::string& name, bool high_priority) {
  return std::make_unique<CudaStream>(name, high_priority);
}
std::unique_ptr<Event> make_event(bool timing) { return std::make_unique<CudaEvent>(timing); }

SCMOE_CUDA_END
