// Memory-limited inference: routed experts stay in host memory and each MoE layer keeps a small device
// cache of them (N slots, least recently used evicted). A miss copies the expert's weights into a slot
// over the host-to-device link on a copy stream, and the compute thread waits for that copy only when
// it needs the weights, so a transfer started early (ScMoE's shortcut gate decides one block ahead)
// runs while the backbone computes. The CPU backend simulates the link's bandwidth and latency so that
// this logic runs, and is timed, without a GPU.
#pragma once
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "core/stream.h"

namespace scmoe {

// The host-to-device link that expert weights cross: one copy stream (a worker thread on the CPU), so
// transfers queue one after the other as on one PCIe link. With gb_s or latency_us > 0 a copy takes
// latency + bytes / bandwidth of wall time (the memcpy included), counted from when it is issued or
// the previous copy ends: the CPU backend's simulated link.
class HostLink {
 public:
  HostLink(double gb_s, double latency_us);
  ~HostLink();
  // Copies `bytes` from src to dst on the copy stream; `done` completes when the transfer has.
  void copy(void* dst, const void* src, size_t bytes, Event& done);
  bool simulated() const { return gb_s_ > 0 || latency_us_ > 0; }
  double gb_s() const { return gb_s_; }
  double latency_us() const { return latency_us_; }
  // Time transfers took, from their (modelled) start to their end. Read it after synchronize().
  double busy_ms() const { return busy_ns_.load(std::memory_order_relaxed) * 1e-6; }
  void synchronize() { stream_->synchronize(); }  // every transfer issued so far is done

 private:
  double gb_s_, latency_us_;
  std::chrono::steady_clock::time_point free_at_{};  // when the simulated link finishes its last copy
  std::atomic<int64_t> busy_ns_{0};
  std::unique_ptr<Stream> stream_;  // last: its worker thread must stop before the members above go
};

// Counters of one layer's cache (or their sum over layers). A request is a routing decision's need
// for an expert in the current token (counted once per token and expert); it hits when the expert is
// already in a slot (resident, or on its way because of an earlier prefetch).
struct OffloadStats {
  int64_t requests = 0, hits = 0;
  int64_t transfers = 0, bytes = 0;           // copies over the link, all causes
  int64_t spec_transfers = 0, spec_hits = 0;  // speculative prefetches; requests they served
  double exposed_ms = 0;                      // time the compute thread waited for transfers
  double hit_rate() const { return requests > 0 ? double(hits) / double(requests) : 0.0; }
  OffloadStats& operator+=(const OffloadStats& o);
};

// One MoE layer's device cache. `host` + host_offsets[e] is where expert e's tensors start in the host
// store (the parameter buffer), `span` elements covering all of them (fc then proj, as the parameter
// table lays them out); a slot holds that span with the same layout, so the expert's tensors are found
// at the same relative offsets in either place and compute gives the same bits.
template <class T>
class ExpertCache {
 public:
  ExpertCache(int layer, int slots, const T* host, std::vector<size_t> host_offsets, size_t span,
              HostLink* link);
  ~ExpertCache();
  ExpertCache(const ExpertCache&) = delete;
  ExpertCache& operator=(const ExpertCache&) = delete;

  // The current token needs expert e (speculative: may need it): start its transfer unless it is in a
  // slot already. Never evicts an expert the current token needs, nor a slot still being written.
  void request(int e, bool speculative = false);
  // Expert e's weights (laid out as at host + host_offsets[e]), once its transfer is done; requests it
  // first if nobody did. The time spent waiting is exposed transfer time.
  const T* acquire(int e);
  // The current token is done with this layer: its experts may be evicted again.
  void release();

  const OffloadStats& stats() const { return stats_; }
  int slots() const { return int(slots_.size()); }
  size_t slot_bytes() const { return span_ * sizeof(T); }
  int layer() const { return layer_; }
  // Cached experts, least recently used first (for tests and logs).
  std::vector<int> lru_order() const;
  // Transfers of each expert so far (for tests).
  const std::vector<int64_t>& transfers_per_expert() const { return per_expert_; }

 private:
  struct Slot {
    int expert = -1;
    uint64_t last_use = 0;
    bool needed = false;       // the current token needs it: never evicted before release()
    bool speculative = false;  // brought in by a prefetch that no request has used yet
    std::unique_ptr<Event> ready;
  };
  Slot* find(int e);
  Slot& victim();
  void wait(Event& e);
  T* slot_data(const Slot& s) const { return base_ + size_t(&s - slots_.data()) * stride_; }

  int layer_;
  const T* host_;
  std::vector<size_t> offsets_;
  size_t span_, stride_;
  HostLink* link_;
  std::vector<Slot> slots_;
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> mem_;
  T* base_ = nullptr;
  uint64_t tick_ = 0;
  OffloadStats stats_;
  std::vector<int64_t> per_expert_;
};

extern template class ExpertCache<float>;
extern template class ExpertCache<double>;

}  // namespace scmoe
