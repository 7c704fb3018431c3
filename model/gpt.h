// The GPT decoder: embeddings, n_layer pre-norm blocks, final norm, tied output head, cross-entropy,
// written once against a backend B (kernels/cpu/backend.h: Cpu<float|double>; kernels/cuda/backend.h:
// cuda::Cuda<float|bf16>). The architecture (model/architecture.h) lays the tensors out; parameters,
// gradients and (where the weights are narrower, bf16) fp32 master weights are each one contiguous
// buffer of the backend's memory; activations live in an arena sized for a fixed micro-batch at
// construction. Forward and backward run the overlapped ScMoE schedule (model/schedule.h): kernels on
// the compute stream, the MoE exchanges on a communication stream, ordered by events.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/arena.h"
#include "core/rng.h"
#include "core/stream.h"
#include "kernels/cpu/backend.h"
#include "model/architecture.h"
#include "model/block.h"
#include "model/schedule.h"
#include "model/stream_order.h"

namespace scmoe {

template <class B>
class GPT {
 public:
  using T = typename B::T;
  using G = typename B::G;
  using S = typename B::S;
  using Acc = typename B::Acc;

  struct Options {
    bool training = true;          // gradients (and master weights where T is narrower than G)
    bool resident_experts = true;  // false: routed experts stay in host memory (expert offloading)
  };
  // comm: the process group for expert parallelism (null: single process, every expert local); it must
  // move buffers of B's memory. micro_batch 0: weights only, no activations (a generator's model).
  GPT(const Config& cfg, int micro_batch, Communicator* comm = nullptr, Options opt = Options());
  ~GPT();
  GPT(const GPT&) = delete;
  GPT& operator=(const GPT&) = delete;

  // Deterministic initialisation: each tensor draws from its own stream seeded by (seed, name), so
  // adding a tensor never changes the others.
  void init(uint64_t seed);
  // The master weights (the weights when not training), host arrays in the ParamTable's layout. With
  // experts offloaded, set_params keeps the routed experts in the host store (host_experts()).
  void set_params(const G* host);
  void get_params(G* host);
  void get_grads(G* host);

  // Queues the forward pass on B x T tokens (host arrays). With targets it computes the mean
  // cross-entropy (loss()); when grad_scale > 0 it also prepares the output gradient (dL/dlogits *
  // grad_scale) for backward(). `rng` draws gate noise (training only; nullptr disables it).
  void forward_async(const int32_t* inputs, const int32_t* targets, double grad_scale, Rng* rng = nullptr);
  // The last forward's mean cross-entropy (0 without targets); waits for the streams.
  double loss();
  double forward(const int32_t* inputs, const int32_t* targets, double grad_scale, Rng* rng = nullptr) {
    forward_async(inputs, targets, grad_scale, rng);
    return loss();
  }
  // Queues the backward: accumulates parameter gradients of (grad_scale * loss) into grads().
  void backward();
  void zero_grad();
  // Waits for both streams (errors of their work surface here) and takes the micro-step's timings.
  void synchronize();

  B& kernels() { return k_; }
  Stream& compute_stream() { return k_.compute(); }
  const Architecture& arch() const { return arch_; }
  const ParamTable& table() const { return arch_.table; }
  G* params() { return master_; }         // backend memory (host memory on the CPU)
  G* grads() { return grads_.get(); }
  T* weights() { return weights_; }
  const T* logits() const { return logits_; }  // [B*T, V] of the last forward (row b*T + t)
  size_t num_params() const { return table().count(); }
  size_t activation_bytes() const { return arena_.bytes(); }
  // What training this model takes in the backend's memory: its weights and gradients, AdamW's two
  // moments per parameter and the activation arena. Recorded with the backend before the arena is
  // allocated, so that running out of device memory from then on quotes it; the trainer prints it.
  struct MemoryUse {
    size_t weights = 0, optimizer = 0, activations = 0;
    size_t total() const { return weights + optimizer + activations; }
    // "weights and gradients 1.2 MiB, AdamW state 2.4 MiB, activations 3.0 MiB"
    std::string describe() const;
  };
  const MemoryUse& memory_use() const { return memory_; }
  int micro_batch() const { return B_; }
  int top_k() const { return arch_.k; }  // routed experts per token (resolved default)
  const ModelConfig& model_config() const { return mc_; }
  std::vector<Block<B>>& blocks() { return blocks_; }
  const Norm<B>& final_norm() const { return lnf_; }
  // Offloaded experts (Options::resident_experts false): the host store and where expert e of block l
  // starts in it (expert_offsets()[l][e]); one expert spans arch().blocks[l].experts.span elements.
  const T* host_experts() const { return host_experts_.get(); }
  const std::vector<std::vector<size_t>>& expert_offsets() const { return expert_offsets_; }

  // Auxiliary losses (coefficient-weighted router balance, z and sequence-level losses) of the last
  // forward, summed over MoE layers; part of the training objective, not of the reported cross-entropy.
  double aux_loss();
  // (layer index, statistics of its last forward) for every MoE layer (waits for the streams).
  std::vector<std::pair<int, MoeStats>> moe_stats();

  // moe.expert_bias: after each optimizer step, every MoE layer's bias moves towards balance by the
  // step's loads (queued on the compute stream). The biases are state outside the parameter table:
  // checkpoints hold them as "blocks.<l>.moe.expert_bias" (fp32 [E]); empty without the option.
  void update_expert_biases();
  std::vector<std::pair<std::string, std::vector<float>>> expert_biases();
  void set_expert_bias(const std::string& name, const std::vector<float>& bias);
  static std::string expert_bias_name(int layer) { return "blocks." + std::to_string(layer) + ".moe.expert_bias"; }

  // With scmoe.expert_slot: auto, picks each branch's slot from the op times of the first
  // kAutoSlotSteps steps (call after every step); returns a line to log when it did.
  std::string tune_slots(int steps_seen);
  static constexpr int kAutoSlotSteps = 3;
  const std::vector<Action>& forward_schedule() const { return fwd_plan_; }
  const std::vector<Action>& backward_schedule() const { return bwd_plan_; }
  const std::vector<BranchTap>& branches() const { return branches_; }
  bool overlapped() const { return side_ != nullptr; }
  // Cross-stream waits the last micro-step issued (the mutation test drops each in turn).
  int waits_per_step() const { return order_.count(); }

  // Communication time of each MoE layer's exchanges and the part the compute stream waited for,
  // since the last call (which resets them); when peer_wait_known (a host transport reporting
  // arrivals, or comm.measure_peer_wait), the parts of both spent waiting for the slowest rank
  // (Dispatcher::peer_wait_ms).
  struct CommTiming {
    int layer;
    double comm_ms, exposed_ms, peer_wait_ms, exposed_peer_wait_ms;
    bool peer_wait_known;
  };
  std::vector<CommTiming> take_comm_timings();

 private:
  void alloc_activations(Arena& a);
  void lay_out_weights(const Options& opt);
  void run(const Action& a, Rng* rng);
  void run_plan(const std::vector<Action>& plan, bool backward, Rng* rng);
  void build_plans();
  void take_stats();

  B k_;
  Config cfg_;
  ModelConfig mc_;
  Architecture arch_;
  int B_, Tn_, C_, V_;
  Communicator* comm_ = nullptr;
  bool training_ = true;
  // Parameters: fp32/T master (training), their gradients, and the T copy the forward reads (the
  // master itself where T == G). place_: tensor index -> offset in weights_ when laid out otherwise.
  typename B::template Array<G> master_store_, grads_;
  typename B::template Array<T> weights_store_;
  G* master_ = nullptr;
  T* weights_ = nullptr;
  std::vector<size_t> place_;
  typename B::template PinnedArray<T> host_experts_;  // offloaded routed experts (pinned host memory)
  std::vector<std::vector<size_t>> expert_offsets_;
  size_t param_bytes_ = 0;
  MemoryUse memory_;
  std::vector<Block<B>> blocks_;
  Norm<B> lnf_;
  // The schedule: action lists, their measured times (ms, accumulated), the routed branches, and
  // where each micro-step's timing marks are (when timing: the first steps with auto slots, a trace).
  std::vector<BranchTap> branches_;
  std::vector<Action> fwd_plan_, bwd_plan_;
  std::vector<double> fwd_ms_, bwd_ms_;
  std::vector<Event*> fwd_marks_, bwd_marks_;
  bool auto_slot_ = false, timing_ = false;
  int steps_timed_ = 0;
  std::vector<const T*> dmoe_;  // per block: the routed branch's output gradient (bw_out -> bw_begin)
  std::unique_ptr<Stream> side_;  // the communication stream (null: exchanges run in order on compute)
  WaitCounter order_;
  Timeline<B> timeline_;
  bool pending_ = false;          // queued work not yet synchronised
  bool stats_fresh_ = false;
  std::vector<std::pair<int, MoeStats>> stats_;
  // activations
  Arena arena_;
  typename B::template Array<char> arena_mem_;
  GradScratch<B> scratch_;
  int32_t *inputs_ = nullptr, *targets_ = nullptr;
  std::vector<T*> resid_;  // resid_[l]: input of block l; resid_[L]: output of the last block
  T *lnf_out_ = nullptr, *logits_ = nullptr, *dresid_ = nullptr;
  S* losses_ = nullptr;
  Acc* loss_ = nullptr;
  bool has_targets_ = false;
  double grad_scale_ = 0;
};

// Instantiated in model/gpt.cpp; the CUDA backend's in model/cuda_models.h.
extern template class GPT<Cpu<float>>;
extern template class GPT<Cpu<double>>;

}  // namespace scmoe
