// The host-to-device link of expert offloading (infer/expert_cache.h): where an expert cache's slots
// live and how expert weights reach them. The CPU backend's link is here (HostLink); the CUDA
// backend's is kernels/cuda/expert_link.h.
#pragma once
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <string>

#include "core/stream.h"

namespace scmoe {

// Where an expert cache's slots live and how expert weights reach them: the host-to-device link. One
// copy queue, so transfers run one after the other as on one PCIe link. ExpertCache only books slots;
// the link owns the memory, the copies, the events and the waiting, so the same cache runs on the CPU
// backend (HostLink: a worker thread, optionally a simulated bandwidth) and on CUDA
// (kernels/cuda/expert_link.cu: cudaMemcpyAsync on a copy stream, events, cudaStreamWaitEvent).
class ExpertLink {
 public:
  virtual ~ExpertLink() = default;
  // Copies `bytes` from host memory src to slot memory dst on the copy queue; `done` completes when the
  // transfer has.
  virtual void copy(void* dst, const void* src, size_t bytes, Event& done) = 0;
  // Later compute waits for `done`. The time compute stalls is added to *exposed_ms: at once on the CPU,
  // at the next settle() where the stall is measured on the device.
  virtual void wait(Event& done, double* exposed_ms) = 0;
  virtual void settle() {}  // adds device-measured times to the counters (call after a synchronize)
  virtual std::unique_ptr<Event> make_event() = 0;
  // Slot memory on the compute side of the link, and its alignment (a slot starts at the same offset
  // modulo it as the experts do in the host store, so compute takes the same path on either copy).
  virtual void* alloc(size_t bytes, const std::string& what) = 0;
  virtual void free(void* p) = 0;
  virtual size_t alignment() const = 0;
  virtual void synchronize() = 0;  // every transfer issued so far is done
  // Time transfers took, from their start to their end. Read it after synchronize() (and settle()).
  virtual double busy_ms() const = 0;
  virtual bool simulated() const { return false; }
  virtual std::string describe() const = 0;  // for the figures: what the link is
  virtual double gb_s() const { return 0; }
  virtual double latency_us() const { return 0; }
};

// The CPU backend's link: the copy stream is a worker thread. With gb_s or latency_us > 0 a copy takes
// latency + bytes / bandwidth of wall time (the memcpy included), counted from when it is issued or
// the previous copy ends: the simulated link.
class HostLink : public ExpertLink {
 public:
  HostLink(double gb_s, double latency_us);
  ~HostLink() override;
  void copy(void* dst, const void* src, size_t bytes, Event& done) override;
  // Yield-spins on the compute thread until `done`, adding the time to *exposed_ms.
  void wait(Event& done, double* exposed_ms) override;
  std::unique_ptr<Event> make_event() override { return make_cpu_event(); }
  void* alloc(size_t bytes, const std::string& what) override;
  void free(void* p) override { std::free(p); }
  size_t alignment() const override { return 64; }
  void synchronize() override { stream_->synchronize(); }
  double busy_ms() const override { return busy_ns_.load(std::memory_order_relaxed) * 1e-6; }
  bool simulated() const override { return gb_s_ > 0 || latency_us_ > 0; }
  double gb_s() const override { return gb_s_; }
  double latency_us() const override { return latency_us_; }
  std::string describe() const override;

 private:
  double gb_s_, latency_us_;
  std::chrono::steady_clock::time_point free_at_{};  // when the simulated link finishes its last copy
  std::atomic<int64_t> busy_ns_{0};
  std::unique_ptr<Stream> stream_;  // last: its worker thread must stop before the members above go
};

}  // namespace scmoe
