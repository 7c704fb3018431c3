// Streams and events with CUDA semantics on every backend: work enqueued on one stream runs in order;
// record(event) marks a point in a stream; wait(event) makes later work on another stream wait for it.
// On the CPU the compute stream runs work inline on the calling thread, and side streams
// (communication, copies) are worker threads with queues, so an All-to-All truly runs while the main
// thread computes. On CUDA they wrap cudaStream_t / cudaEvent_t (kernels/cuda).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace scmoe {

class Event {
 public:
  virtual ~Event() = default;
  virtual bool query() const = 0;         // true once the recorded work has completed (or never recorded)
  virtual void synchronize() = 0;         // host blocks until the recorded work has completed
  // Host time (ms, steady clock) at which the recorded point completed; for timing overlap.
  virtual double completed_at_ms() const = 0;
};

class Stream {
 public:
  virtual ~Stream() = default;
  // Runs fn after everything enqueued before it on this stream (inline streams: right now).
  virtual void enqueue(std::function<void()> fn) = 0;
  virtual void record(Event& e) = 0;
  // Work enqueued after this call starts only once `e` has completed. On an inline stream this
  // blocks the calling thread until then; the time blocked is added to waited_ms().
  virtual void wait(Event& e) = 0;
  virtual void synchronize() = 0;         // host blocks until all enqueued work has run
  virtual const std::string& name() const = 0;
  virtual double waited_ms() const = 0;   // total time this stream spent blocked in wait()
  virtual void reset_waited() = 0;
};

// CPU streams: inline (compute) or a worker thread (communication / copies). Exceptions thrown by
// enqueued work are captured and rethrown by the next synchronize() on that stream.
std::unique_ptr<Stream> make_cpu_stream(const std::string& name, bool worker_thread);
std::unique_ptr<Event> make_cpu_event();

#ifdef SCMOE_HAVE_CUDA
// CUDA streams (non-blocking) and events (core/stream_cuda.cu); throw scmoe::Error without a device.
std::unique_ptr<Stream> make_cuda_stream(const std::string& name);
std::unique_ptr<Event> make_cuda_event();
#endif

}  // namespace scmoe
