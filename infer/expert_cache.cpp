// The per-layer expert cache's instantiations and counters (see expert_cache.h).
#include "infer/expert_cache.h"

#include "core/check.h"
#include "infer/expert_cache_impl.h"

namespace scmoe {

OffloadStats& OffloadStats::operator+=(const OffloadStats& o) {
  requests += o.requests, hits += o.hits, transfers += o.transfers, bytes += o.bytes;
  spec_transfers += o.spec_transfers, spec_hits += o.spec_hits, exposed_ms += o.exposed_ms;
  return *this;
}

template class ExpertCache<float>;
template class ExpertCache<double>;

}  // namespace scmoe
