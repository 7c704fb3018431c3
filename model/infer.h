// Incremental inference over a trained GPT<T>: each call appends one token and computes one position,
// with a per-layer KV cache, reusing the model's parameter buffer and layer structs and the kernels of
// the training forward, so its logits are those of GPT<T>::forward on the same window. The ScMoE taps
// and combines are wired as gpt.cpp wires them. Inference is dropless (no capacity) and has no gate
// noise. When the window (model.seq_len positions) is full, it slides: the newest seq_len/2 tokens are
// recomputed into an empty cache and generation goes on.
//
// With inference.offload_experts, routed experts compute from a per-layer device cache fed over a host
// link (model/expert_cache.h) instead of the parameter buffer; the weights are the same bytes, so the
// outputs are bit-identical to the resident model. inference.migration picks when a copy starts:
//   blocking     at the point of use (the baseline);
//   async        as soon as the gate has decided: for ScMoE that is the shortcut tap, a block before the
//                experts run, so the copy overlaps the backbone; for moe / shared_expert it is just
//                before the experts (little to overlap);
//   speculative  async, plus each MoE layer's experts are predicted one block ahead, by running its LN2
//                and gate on the residual stream after the preceding block's attention, and
//                prefetched; a wrong guess costs a transfer and the real experts are fetched at the gate.
#pragma once
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "core/arena.h"
#include "model/expert_cache.h"
#include "model/gpt.h"
#include "model/infer_types.h"
#include "train/config.h"

namespace scmoe {

template <class T>
class Generator {
 public:
  // The model must outlive the generator; its parameters are read, never written.
  Generator(GPT<T>& model, const InferenceConfig& ic);
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  // Appends one token and returns the logits [V] of the next one (valid until the next call).
  const T* step(int32_t token);
  void reset();  // empty context (the expert caches keep their contents)
  void finish() {  // waits for transfers still in flight, so that the figures count them
    if (link_) link_->synchronize();
  }

  const std::vector<int32_t>& context() const { return window_.tokens(); }  // the tokens in the KV cache
  int slides() const { return window_.slides(); }
  int64_t positions() const { return positions_; }  // positions computed so far (slides recompute some)
  bool offloading() const { return !caches_.empty(); }
  Migration migration() const { return migration_; }
  DeviceMemory device_memory() const;
  // Offloading counters per MoE layer (layer index, counters) and summed; empty when not offloading.
  std::vector<std::pair<int, OffloadStats>> layer_stats() const { return per_layer_stats(caches_); }
  OffloadStats offload_stats() const { return sum_stats(layer_stats()); }
  const ExpertLink* link() const { return link_.get(); }
  const ExpertCache<T>* cache(int layer) const;

 private:
  struct BlockState {
    T *ln1 = nullptr, *qkv = nullptr, *atty = nullptr, *a = nullptr, *u = nullptr, *mlp_out = nullptr;
    T *gate_z = nullptr, *coef = nullptr, *moe_norm_out = nullptr, *moe_out = nullptr;
    T *k_cache = nullptr, *v_cache = nullptr;  // [seq_len, C]
    const T* moe_in = nullptr;                 // the routed branch's input (a tap)
    int32_t* idx = nullptr;                    // [k] chosen experts of the last position
    T* gate = nullptr;                         // [k] their gate values
  };
  void alloc(Arena& a);
  void forward_position(int32_t token);
  void norm(const Norm<T>& n, T* y, const T* x);
  void route(int m);
  void speculate(int m, const T* h);
  void run_experts(int m);
  void block_out(int l, T* out);

  GPT<T>& model_;
  const ModelConfig mc_;
  int L_, C_, V_, Tn_, H_, F_ = 0, E_ = 0, k_ = 0;
  const T *wte_ = nullptr, *wpe_ = nullptr;
  Norm<T> lnf_;                            // views of ln_f in the parameter buffer
  std::vector<BranchTap> taps_;            // per block (block < 0: no routed branch)
  std::vector<std::vector<int>> spec_at_;  // per block: MoE layers predicted after its attention
  // Where expert e of block l starts in the parameter buffer, and its tensors' offsets from there.
  std::vector<std::vector<size_t>> expert_off_;
  size_t fc_b_ = 0, proj_w_ = 0, proj_b_ = 0, expert_span_ = 0;
  Migration migration_ = Migration::async;
  Arena arena_;
  std::vector<BlockState> st_;
  T *resid_ = nullptr, *tmp_ = nullptr, *hidden_h_ = nullptr, *hidden_g_ = nullptr, *ye_ = nullptr;
  T *stats_ = nullptr, *glogits_ = nullptr, *probs_ = nullptr, *att_ = nullptr, *spec_x_ = nullptr;
  T *lnf_out_ = nullptr, *logits_ = nullptr;
  int32_t *pos_k_ = nullptr, *spec_idx_ = nullptr;
  T* spec_gate_ = nullptr;
  std::vector<double> pmean_;
  std::vector<int64_t> counts_;
  ContextWindow window_;
  int64_t positions_ = 0;
  std::unique_ptr<ExpertLink> link_;  // declared before the caches: they are destroyed first
  std::vector<std::unique_ptr<ExpertCache<T>>> caches_;  // per block (null for blocks without experts)
};

extern template class Generator<float>;
extern template class Generator<double>;

}  // namespace scmoe
