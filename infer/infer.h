// Incremental inference, written once for both backends: each call appends one token and computes one
// position with a per-layer KV cache, through the layers of a GPT<B> built for generation (weights
// only) and the kernels of the training forward, so its logits are those of GPT<B>::forward on the same
// window. The ScMoE taps and combines are wired as the architecture describes them. Inference is
// dropless (no capacity) and has no gate noise. When the window (model.seq_len positions) is full, it
// slides: the newest seq_len/2 tokens are recomputed into an empty cache and generation goes on.
//
// With inference.offload_experts, routed experts stay in (pinned) host memory and each MoE layer
// computes from a cache of slots fed over the backend's host-to-device link (infer/expert_cache.h:
// a copy thread on the CPU, optionally simulating a bandwidth; cudaMemcpyAsync on a copy stream on
// CUDA) instead of the resident weights; the bytes are the same, so the outputs are bit-identical to
// the resident model. inference.migration picks when a copy starts:
//   blocking     at the point of use (the baseline);
//   async        as soon as the gate has decided: for ScMoE that is the shortcut tap, a block before the
//                experts run, so the copy overlaps the backbone; for moe / shared_expert it is just
//                before the experts (little to overlap);
//   speculative  async, plus each MoE layer's experts are predicted one block ahead, by running its LN2
//                and gate on the residual stream after the preceding block's attention, and
//                prefetched; a wrong guess costs a transfer and the real experts are fetched at the gate.
// The host reads the chosen experts after each gate (on a device: a small synchronisation per MoE
// layer) to pick the experts' weights and the slots to fill.
#pragma once
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "core/arena.h"
#include "core/config.h"
#include "infer/expert_cache.h"
#include "infer/infer_types.h"
#include "model/gpt.h"

namespace scmoe {

template <class B>
class Generator {
 public:
  using T = typename B::T;
  using S = typename B::S;
  using G = typename B::G;
  using Acc = typename B::Acc;
  using Host = typename B::Host;

  // params: the model's weights (host, the ParamTable's layout, e.g. a checkpoint's), copied in.
  Generator(const Config& cfg, const G* params);
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  // Appends one token and returns the logits [V] of the next one, on the host (valid until the next
  // call).
  const Host* step(int32_t token);
  void reset();  // empty context (the expert caches keep their contents)
  void finish();  // waits for the device and transfers still in flight, so that the figures count them

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
  GPT<B>& model() { return model_; }

 private:
  struct BlockState {
    T *ln1 = nullptr, *qkv = nullptr, *atty = nullptr, *a = nullptr, *u = nullptr, *mlp_out = nullptr;
    T *gate_z = nullptr, *moe_norm_out = nullptr, *moe_out = nullptr;
    S* coef = nullptr;
    T *k_cache = nullptr, *v_cache = nullptr;  // [seq_len, C]
    const T* moe_in = nullptr;                 // the routed branch's input (a tap)
    int32_t* idx = nullptr;                    // [k] chosen experts of the last position
    S* gate = nullptr;                         // [k] their gate values
    std::vector<int32_t> chosen;               // host copy of idx
  };
  static typename GPT<B>::Options model_options(const Config& cfg) {
    typename GPT<B>::Options o;
    o.training = false;
    o.resident_experts = !(cfg.inference.offload_experts && cfg.model.arch != "dense");
    return o;
  }
  void alloc(Arena& a);
  void forward_position(int32_t token);
  void norm(const Norm<B>& n, T* y, const T* x);
  void route(int m);
  void speculate(int m, const T* h);
  void run_experts(int m);
  const T* expert_weights(int m, int e);

  GPT<B> model_;  // weights only (micro-batch 0); routed experts in host memory when offloading
  B& k_;
  const ModelConfig mc_;
  int L_, C_, V_, Tn_, H_, F_ = 0, E_ = 0, k_choices_ = 0;
  std::vector<BranchTap> taps_;            // the routed branches (block, tap)
  std::vector<std::vector<int>> spec_at_;  // per block: MoE layers predicted after its attention
  size_t fc_b_ = 0, proj_w_ = 0, proj_b_ = 0;  // an expert's tensors, from its fc.weight
  Migration migration_ = Migration::async;
  Arena arena_;
  typename B::template Array<char> arena_mem_;
  std::vector<BlockState> st_;
  T *resid_ = nullptr, *tmp_ = nullptr, *hidden_h_ = nullptr, *hidden_g_ = nullptr, *ye_ = nullptr;
  T *glogits_ = nullptr, *spec_x_ = nullptr, *lnf_out_ = nullptr, *logits_ = nullptr;
  S *stats_ = nullptr, *probs_ = nullptr, *att_ = nullptr, *spec_gate_ = nullptr;
  Acc *pmean_ = nullptr, *losses_ = nullptr;
  int32_t *pos_k_ = nullptr, *spec_idx_ = nullptr;
  int64_t* counts_ = nullptr;
  std::vector<Host> host_logits_;
  ContextWindow window_;
  int64_t positions_ = 0;
  std::unique_ptr<ExpertLink> link_;  // declared before the caches: they are destroyed first
  std::vector<std::unique_ptr<ExpertCache<T>>> caches_;  // per block (null for blocks without experts)
};

extern template class Generator<Cpu<float>>;
extern template class Generator<Cpu<double>>;

}  // namespace scmoe
