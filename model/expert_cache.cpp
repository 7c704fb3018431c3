// The per-layer expert cache and the (simulated) host-to-device link (see expert_cache.h).
#include "model/expert_cache.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "core/check.h"

namespace scmoe {

namespace {
using Clock = std::chrono::steady_clock;
constexpr size_t kAlign = 64;
}  // namespace

HostLink::HostLink(double gb_s, double latency_us)
    : gb_s_(gb_s), latency_us_(latency_us), stream_(make_cpu_stream("copy", true)) {}

HostLink::~HostLink() {
  try {
    stream_->synchronize();
  } catch (...) {  // a memcpy does not throw; nothing to report from a destructor anyway
  }
}

// The simulated link is a timeline, as a DMA engine is: a transfer starts when it is issued or when the
// previous one ends, whichever is later, and ends a transfer time after that. Taking the times at
// issue rather than when the worker thread gets a core keeps scheduling delays out of the model.
void HostLink::copy(void* dst, const void* src, size_t bytes, Event& done) {
  Clock::time_point start = Clock::now(), end = start;
  if (simulated()) {
    const double s = latency_us_ * 1e-6 + (gb_s_ > 0 ? double(bytes) / (gb_s_ * 1e9) : 0.0);
    start = std::max(start, free_at_);
    end = free_at_ = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  }
  stream_->enqueue([this, dst, src, bytes, start, end] {
    std::memcpy(dst, src, bytes);
    // Sleep most of the rest, then yield-spin: a sleep overshoots by ~0.1 ms, a large part of a transfer.
    if (end - Clock::now() > std::chrono::microseconds(300))
      std::this_thread::sleep_until(end - std::chrono::microseconds(200));
    while (Clock::now() < end) std::this_thread::yield();
    busy_ns_.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count(),
                       std::memory_order_relaxed);
  });
  stream_->record(done);
}

OffloadStats& OffloadStats::operator+=(const OffloadStats& o) {
  requests += o.requests, hits += o.hits, transfers += o.transfers, bytes += o.bytes;
  spec_transfers += o.spec_transfers, spec_hits += o.spec_hits, exposed_ms += o.exposed_ms;
  return *this;
}

template <class T>
ExpertCache<T>::ExpertCache(int layer, int slots, const T* host, std::vector<size_t> host_offsets,
                            size_t span, HostLink* link)
    : layer_(layer), host_(host), offsets_(std::move(host_offsets)), span_(span), link_(link) {
  SCMOE_CHECK(slots >= 1, "expert cache of layer " << layer << ": needs at least one slot");
  SCMOE_CHECK(!offsets_.empty(), "expert cache of layer " << layer << ": no experts");
  // BLAS may take a different path (and sum in another order) for another alignment, so a slot starts
  // at the same offset modulo 64 bytes as the experts do in the host store: the same bits either way.
  const size_t phase = reinterpret_cast<uintptr_t>(host_ + offsets_[0]) % kAlign;
  for (size_t off : offsets_)
    SCMOE_CHECK(
        reinterpret_cast<uintptr_t>(host_ + off) % kAlign == phase,
        "expert cache of layer " << layer << ": experts are not equally aligned in the parameter buffer");
  const size_t stride_bytes = (span_ * sizeof(T) + kAlign - 1) / kAlign * kAlign;
  stride_ = stride_bytes / sizeof(T);
  mem_.reset(static_cast<char*>(std::aligned_alloc(kAlign, stride_bytes * size_t(slots) + kAlign)));
  SCMOE_CHECK(mem_, "out of memory allocating the expert cache of layer " << layer);
  base_ = reinterpret_cast<T*>(mem_.get() + phase);
  slots_.resize(slots);
  for (Slot& s : slots_) s.ready = make_cpu_event();
  per_expert_.assign(offsets_.size(), 0);
}

template <class T>
ExpertCache<T>::~ExpertCache() {
  for (Slot& s : slots_) s.ready->synchronize();  // no copy may still write into the memory freed next
}

template <class T>
typename ExpertCache<T>::Slot* ExpertCache<T>::find(int e) {
  for (Slot& s : slots_)
    if (s.expert == e) return &s;
  return nullptr;
}

template <class T>
void ExpertCache<T>::request(int e, bool speculative) {
  SCMOE_CHECK(e >= 0 && e < int(offsets_.size()), "expert cache of layer " << layer_ << ": no expert " << e);
  Slot* s = find(e);
  if (!speculative) {
    if (s && s->needed) {  // requested earlier in this token (the gate's request, then the point of use)
      s->last_use = ++tick_;
      return;
    }
    stats_.requests++;
  }
  if (s) {
    if (!speculative) {
      stats_.hits++;
      if (s->speculative) stats_.spec_hits++;
      s->speculative = false;
      s->needed = true;
    }
    s->last_use = ++tick_;
    return;
  }
  Slot& v = victim();
  v.expert = e;
  v.needed = !speculative;
  v.speculative = speculative;
  v.last_use = ++tick_;
  link_->copy(slot_data(v), host_ + offsets_[e], slot_bytes(), *v.ready);
  stats_.transfers++;
  stats_.bytes += int64_t(slot_bytes());
  if (speculative) stats_.spec_transfers++;
  per_expert_[e]++;
}

// An empty slot, else the least recently used one that the current token does not need, preferring
// slots whose copy is done. A slot still being written (a wrong prefetch) may be reused: copies run
// in order on the one copy stream, so the new copy starts only after the old one has finished.
template <class T>
typename ExpertCache<T>::Slot& ExpertCache<T>::victim() {
  for (Slot& s : slots_)
    if (s.expert < 0) return s;
  Slot *done = nullptr, *any = nullptr;
  for (Slot& s : slots_) {
    if (s.needed) continue;
    if (!any || s.last_use < any->last_use) any = &s;
    if (s.ready->query() && (!done || s.last_use < done->last_use)) done = &s;
  }
  SCMOE_CHECK(any, "expert cache of layer " << layer_ << ": all " << slots_.size()
                                            << " slots hold experts the current token needs; "
                                               "inference.expert_cache_slots must be >= moe.top_k");
  return done ? *done : *any;
}

template <class T>
const T* ExpertCache<T>::acquire(int e) {
  request(e, false);
  Slot* s = find(e);
  wait(*s->ready);
  s->last_use = ++tick_;
  return slot_data(*s);
}

template <class T>
void ExpertCache<T>::release() {
  for (Slot& s : slots_) s.needed = false;
}

template <class T>
std::vector<int> ExpertCache<T>::lru_order() const {
  std::vector<const Slot*> v;
  for (const Slot& s : slots_)
    if (s.expert >= 0) v.push_back(&s);
  std::sort(v.begin(), v.end(), [](const Slot* a, const Slot* b) { return a->last_use < b->last_use; });
  std::vector<int> out;
  for (const Slot* s : v) out.push_back(s->expert);
  return out;
}

// Yield-spin rather than block: a blocked compute thread wakes up late behind OpenMP's spinning pool
// threads (see Dispatcher), which would count as exposed time that a GPU would not have.
template <class T>
void ExpertCache<T>::wait(Event& e) {
  if (e.query()) return;
  const auto t0 = Clock::now();
  while (!e.query()) std::this_thread::yield();
  stats_.exposed_ms += std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

template class ExpertCache<float>;
template class ExpertCache<double>;

}  // namespace scmoe
