// The generator's plain types (infer/infer.h, on either backend): when expert copies start, the device
// memory they account for, the KV cache's window.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

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

// The tokens in the KV cache, at most `size` (model.seq_len). push() appends a token and has it
// computed; when the window is full it first slides: the newest size/2 tokens are recomputed into an
// empty cache. compute(token) computes the position tokens().size() - 1.
class ContextWindow {
 public:
  explicit ContextWindow(int size) : size_(size) {}
  template <class Compute>
  void push(int32_t token, Compute&& compute) {
    if (int(tokens_.size()) == size_) {
      std::vector<int32_t> tail(tokens_.end() - size_ / 2, tokens_.end());
      tokens_.clear();
      slides_++;
      for (int32_t t : tail) {
        tokens_.push_back(t);
        compute(t);
      }
    }
    tokens_.push_back(token);
    compute(token);
  }
  void clear() { tokens_.clear(); }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  int position() const { return int(tokens_.size()) - 1; }  // of the token being computed
  int slides() const { return slides_; }

 private:
  int size_;
  std::vector<int32_t> tokens_;
  int slides_ = 0;
};

}  // namespace scmoe
