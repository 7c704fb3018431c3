// What the CPU generator (model/infer.h) and the CUDA one (model/infer_cuda.h) share: when expert
// copies start, and the device memory they account for.
#pragma once
#include <cstddef>
#include <string>

namespace scmoe {

enum class Migration { blocking, async, speculative };
Migration parse_migration(const std::string& s);

// Bytes the device would hold. Everything is allocated once at start, so the peak is the total.
struct DeviceMemory {
  size_t expert_params = 0;  // every routed expert of every layer
  size_t other_params = 0;   // everything else (embeddings, attention, norms, gates, shared experts)
  size_t expert_cache = 0;   // the cache slots (offloading only)
  size_t kv_cache = 0, activations = 0;
  size_t resident() const { return expert_params + other_params + kv_cache + activations; }
  size_t offloaded() const { return other_params + expert_cache + kv_cache + activations; }
};

}  // namespace scmoe
