// ExpertCache's member definitions (see expert_cache.h), for the translation units that instantiate
// it: expert_cache.cpp (float, double) and the CUDA generator (its bf16 storage type).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>

#include "core/check.h"
#include "infer/expert_cache.h"

namespace scmoe {

template <class T>
ExpertCache<T>::ExpertCache(int layer, int slots, const T* host, std::vector<size_t> host_offsets,
                            size_t span, ExpertLink* link)
    : layer_(layer), host_(host), offsets_(std::move(host_offsets)), span_(span), link_(link) {
  SCMOE_CHECK(slots >= 1, "expert cache of layer " << layer << ": needs at least one slot");
  SCMOE_CHECK(!offsets_.empty(), "expert cache of layer " << layer << ": no experts");
  // BLAS may take a different path (and sum in another order) for another alignment, so a slot starts
  // at the same offset modulo the link's alignment as the experts do in the host store: the same bits
  // either way.
  const size_t align = link_->alignment();
  const size_t phase = reinterpret_cast<uintptr_t>(host_ + offsets_[0]) % align;
  for (size_t off : offsets_)
    SCMOE_CHECK(
        reinterpret_cast<uintptr_t>(host_ + off) % align == phase,
        "expert cache of layer " << layer << ": experts are not equally aligned in the parameter buffer");
  const size_t stride_bytes = (span_ * sizeof(T) + align - 1) / align * align;
  stride_ = stride_bytes / sizeof(T);
  mem_ = static_cast<char*>(
      link_->alloc(stride_bytes * size_t(slots) + align, "the expert cache of layer " + std::to_string(layer)));
  base_ = reinterpret_cast<T*>(mem_ + phase);
  slots_.resize(slots);
  for (Slot& s : slots_) s.ready = link_->make_event();
  per_expert_.assign(offsets_.size(), 0);
}

template <class T>
ExpertCache<T>::~ExpertCache() {
  // No copy may still write into the memory freed next. A device error here (a fault the step that
  // is unwinding already reported) must not escape a destructor.
  try {
    for (Slot& s : slots_) s.ready->synchronize();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "warning: expert cache of layer %d: waiting for its copies failed: %s\n", layer_, e.what());
  }
  link_->free(mem_);
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
  link_->wait(*s->ready, &stats_.exposed_ms);
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

}  // namespace scmoe
