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
  // Milliseconds from `start`'s completion to this event's (both complete, made by the same backend):
  // host clock on the CPU, the device's clock on CUDA (cudaEventElapsedTime; timing events only).
  virtual double elapsed_ms(const Event& start) const { return completed_at_ms() - start.completed_at_ms(); }
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
  // The backend's own handle (a cudaStream_t on CUDA, for kernel launches and NCCL); null on the CPU.
  virtual void* native_handle() const { return nullptr; }
};

// CPU streams: inline (compute) or a worker thread (communication / copies). Exceptions thrown by
// enqueued work are captured and rethrown by the next synchronize() on that stream. An inline stream's
// wait() yield-spins the calling thread: a sleeping compute thread wakes up behind OpenMP's spinning
// pool threads on another core (a 2-core step went from 14 to 41 ms); yielding hands the core to the
// communication thread when it needs it and resumes at once when it is done.
// poll_us: an idle worker first polls its queue (yielding) that long before it sleeps. Which is better
// depends on who else wants the cores, as measured under Linux's EEVDF scheduler:
//  - 0 (sleep at once) for a communication stream beside compute threads that hold every core: each
//    yield pushes the poller's virtual deadline a slice later, so it got its core milliseconds after
//    its work arrived (an exchange posted at t began at t + 4.8 ms; 2-rank ScMoE overlap 0.89-0.93
//    polling, 0.98 sleeping; one process on 2 OpenMP threads 0.74-0.86 vs 0.998), and a sleeper wakes
//    with lag to spend;
//  - ~2000 for a copy stream fed many small transfers (expert offloading), which must start each at
//    once even when other processes load the machine: staying runnable keeps its share of a core,
//    while a sleeper woken behind them started late (test_offload_timing under a CPU hog).
std::unique_ptr<Stream> make_cpu_stream(const std::string& name, bool worker_thread, int poll_us = 0);
std::unique_ptr<Event> make_cpu_event();

// CUDA streams and events are the CUDA backend's (kernels/cuda/stream.h).

}  // namespace scmoe
