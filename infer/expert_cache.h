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
#include <string>
#include <utility>
#include <vector>

#include "core/expert_link.h"

namespace scmoe {

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
              ExpertLink* link);
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
  T* slot_data(const Slot& s) const { return base_ + size_t(&s - slots_.data()) * stride_; }

  int layer_;
  const T* host_;
  std::vector<size_t> offsets_;
  size_t span_, stride_;
  ExpertLink* link_;
  std::vector<Slot> slots_;
  char* mem_ = nullptr;  // from link_->alloc
  T* base_ = nullptr;
  uint64_t tick_ = 0;
  OffloadStats stats_;
  std::vector<int64_t> per_expert_;
};

// A generator's caches, one per block (null for blocks without routed experts): each layer's counters,
// their sum, and the device bytes of all the slots.
template <class T>
std::vector<std::pair<int, OffloadStats>> per_layer_stats(const std::vector<std::unique_ptr<ExpertCache<T>>>& caches) {
  std::vector<std::pair<int, OffloadStats>> out;
  for (const auto& c : caches)
    if (c) out.push_back({c->layer(), c->stats()});
  return out;
}
inline OffloadStats sum_stats(const std::vector<std::pair<int, OffloadStats>>& per_layer) {
  OffloadStats s;
  for (const auto& [layer, st] : per_layer) s += st;
  return s;
}
template <class T>
size_t slot_bytes_of(const std::vector<std::unique_ptr<ExpertCache<T>>>& caches) {
  size_t n = 0;
  for (const auto& c : caches)
    if (c) n += size_t(c->slots()) * c->slot_bytes();
  return n;
}

// Definitions in infer/expert_cache_impl.h: expert_cache.cpp instantiates float and double, the CUDA
// generator its bf16 storage type.
extern template class ExpertCache<float>;
extern template class ExpertCache<double>;

}  // namespace scmoe
