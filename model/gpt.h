// The GPT decoder: embeddings, n_layer pre-norm blocks, final norm, tied output head, cross-entropy.
// Parameters and gradients are each one contiguous buffer; activations live in an arena sized for a
// fixed micro-batch at construction. Forward and backward are hand-written; T is float or double.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/arena.h"
#include "core/rng.h"
#include "core/stream.h"
#include "model/block.h"
#include "model/schedule.h"
#include "model/params.h"
#include "train/config.h"

namespace scmoe {

template <class T>
class GPT {
 public:
  // comm: the process group for expert parallelism (null: single process, every expert local).
  GPT(const Config& cfg, int micro_batch, Communicator* comm = nullptr);

  // Deterministic initialisation: each tensor draws from its own stream seeded by (seed, name), so
  // adding a tensor never changes the others.
  void init(uint64_t seed);

  // Runs the forward pass on B x T tokens. With targets, returns the mean cross-entropy; when
  // grad_scale > 0 it also prepares the output gradient (dL/dlogits * grad_scale) for backward().
  // `rng` draws gate noise (training only; nullptr disables it).
  double forward(const int32_t* inputs, const int32_t* targets, T grad_scale, Rng* rng = nullptr);
  // Accumulates parameter gradients of (grad_scale * loss) into grads(). Call after forward().
  void backward();
  void zero_grad();

  const ParamTable& table() const { return table_; }
  T* params() { return params_.data(); }
  T* grads() { return grads_.data(); }
  size_t num_params() const { return table_.count(); }
  size_t activation_bytes() const { return arena_.bytes(); }
  int micro_batch() const { return B_; }
  int top_k() const { return top_k_; }  // routed experts per token (resolved default)
  const ModelConfig& model_config() const { return mc_; }
  std::vector<Block<T>>& blocks() { return blocks_; }
  // Logits [B*T, V] of the last forward (row b*T + t), e.g. to check incremental decoding against it.
  const T* logits() const { return logits_; }

  // Auxiliary losses (coefficient-weighted router balance + z-loss) of the last forward, summed over
  // MoE layers; they are part of the training objective but not of the reported cross-entropy.
  double aux_loss() const;
  // With scmoe.expert_slot: auto, picks each branch's slot from the op times of the first
  // kAutoSlotSteps steps (call after every step); returns a line to log when it did.
  std::string tune_slots(int steps_seen);
  static constexpr int kAutoSlotSteps = 3;
  const std::vector<Action>& forward_schedule() const { return fwd_plan_; }
  const std::vector<Action>& backward_schedule() const { return bwd_plan_; }
  const std::vector<BranchTap>& branches() const { return branches_; }

  // Communication time of each MoE layer's exchanges and the part the compute thread waited for,
  // since the last call (which resets them); when peer_wait_known (shared-memory transport or
  // comm.measure_peer_wait), the parts of both spent waiting for the slowest rank to arrive
  // (Dispatcher::peer_wait_ms).
  struct CommTiming {
    int layer;
    double comm_ms, exposed_ms, peer_wait_ms, exposed_peer_wait_ms;
    bool peer_wait_known;
  };
  std::vector<CommTiming> take_comm_timings();

  // (layer index, statistics of its last forward) for every MoE layer.
  std::vector<std::pair<int, const MoeStats*>> moe_stats() const;

 private:
  void alloc_activations(Arena& a);

  ModelConfig mc_;
  int B_, Tn_, C_, V_;
  int top_k_ = 0, d_expert_ = 0;
  ParamTable table_;
  std::vector<T> params_, grads_;
  size_t wte_off_ = 0, wpe_off_ = 0;
  // Where each block's routed branch reads its input: a block's u (LN2 output) or the normalised
  // input of a block (the model runs that norm, owned by the MoE block, before the block).
  enum class TapKind { none, u, norm_of_input };
  struct Tap {
    TapKind kind = TapKind::none;
    int src = -1;
  };
  std::vector<Block<T>> blocks_;
  std::vector<Tap> taps_;
  // The schedule: action lists, their measured times (ms, accumulated), the routed branches.
  void run(const Action& a, Rng* rng);
  void run_plan(const std::vector<Action>& plan, std::vector<double>& ms, Rng* rng);
  void build_plans();
  std::vector<BranchTap> branches_;
  std::vector<Action> fwd_plan_, bwd_plan_;
  std::vector<double> fwd_ms_, bwd_ms_;
  std::vector<const T*> dmoe_;  // per block: the routed branch's output gradient (bw_out -> bw_begin)
  std::unique_ptr<Stream> comm_stream_;
  bool auto_slot_ = false;
  Norm<T> lnf_;
  Arena arena_;
  GradScratch<T> scratch_;
  const int32_t* inputs_ = nullptr;
  std::vector<T*> resid_;      // resid_[l]: input of block l; resid_[L]: output of the last block
  T *lnf_out_ = nullptr, *logits_ = nullptr, *losses_ = nullptr, *dresid_ = nullptr;
  T grad_scale_ = 0;
};

extern template class GPT<float>;
extern template class GPT<double>;

}  // namespace scmoe
