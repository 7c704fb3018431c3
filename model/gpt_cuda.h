// The GPT on the CUDA backend (llm.c's train_gpt2.cu shape): parameters, gradients and activations in
// device memory, the forward and backward passes as sequences of our kernels (kernels/cuda/), AdamW and
// the global gradient norm on the device. T is the activation/weight storage type: float (fp32) or
// bf16 (bf16 weights and activations; fp32 master weights, gradients, optimizer state, norm
// statistics and losses). Tensor names and offsets come from the CPU model's ParamTable, so
// checkpoints and initialisation are shared with the CPU backend.
//
// Built twice like the kernels: natively (scmoe_cuda) and under the SIMT emulation, where "device"
// memory is host memory and the same code trains in CI (tests/emu/gpt_cuda.cpp compares it with the
// CPU backend). Architectures: dense, moe, shared_expert and scmoe (positions 1-3, combine add/cg1/cg2),
// with or without gate noise (drawn on the host from the trainer's RNG as the CPU model draws it),
// single process, run in the CPU model's sequential order.
// Routed experts: router and dispatch plan on the device, then one host synchronisation per MoE layer
// (the per-expert row counts) so that each expert runs its own matmuls on its rows.
// Several processes (a device communicator: NCCL, or Gloo on the emulated device's host memory): data
// parallel for the replicated weights (gradients all-reduced in step()) and expert parallel for the
// routed experts, rank r holding experts [r*E/W, (r+1)*E/W) as the CPU model's Dispatcher lays them
// out: route_sort, a count exchange, admission in the single-process order on the host (cpu::admit_rows,
// so drops do not depend on W), the rows' All-to-All there and back, the same in backward. Sequential
// (no overlap yet); the router's statistics and losses are global as on the CPU.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cuda/abi.h"
#include "model/params.h"
#include "train/config.h"

namespace scmoe {
struct Rng;
class Communicator;
}

SCMOE_CUDA_BEGIN

// What one MoE layer observed in its last forward (the CPU model's MoeStats, single process).
struct MoeLayerStats {
  int layer = 0;
  double aux = 0, z = 0;                   // load-balance and z losses (before their coefficients)
  int64_t dropped = 0, assignments = 0;    // assignments over capacity; N * top_k
  std::vector<int64_t> tokens_per_expert;  // admitted rows per expert
};

template <class T>
class GptCuda {
 public:
  // `table`: the CPU model's parameter table (GPT<float>::table()); B sequences of model.seq_len.
  // attention: 0 = llm.c's GEMM + fused softmax path (tensor cores; saves the T x T probabilities),
  // 1 = the fused flash-style kernels (no T x T matrix), -1 = auto (flash from seq_len 2048 on).
  // comm: the device-buffer communicator of a multi-process run (nullptr or world size 1: one process);
  // `table` must then be the CPU model's for this rank (its routed experts only), and comm must run its
  // collectives in `stream`'s order (NCCL: created with `stream` as its stream hint), since the kernels
  // around them are not otherwise ordered with them.
  GptCuda(const Config& cfg, const ParamTable& table, int B, cudaStream_t stream = nullptr, int attention = -1,
          Communicator* comm = nullptr);
  ~GptCuda();
  GptCuda(const GptCuda&) = delete;
  GptCuda& operator=(const GptCuda&) = delete;

  // Master weights (fp32) to and from the host, in the ParamTable's layout.
  void set_params(const float* host);
  void get_params(float* host) const;
  void get_grads(float* host) const;
  // AdamW moments (fp32, the ParamTable's layout), for checkpoints.
  void set_moments(const float* m, const float* v);
  void get_moments(float* m, float* v) const;
  void zero_grad();

  // Forward on B x seq_len tokens (host arrays). With targets returns the mean cross-entropy; when
  // grad_scale > 0 the output gradient is prepared for backward(). `rng` draws the gate noise
  // (moe.gate_noise; nullptr: none, as in evaluation), advancing it as GPT<T>::forward does.
  float forward(const int32_t* inputs, const int32_t* targets, float grad_scale, Rng* rng = nullptr);
  void backward();
  // Clips to optim.grad_clip and applies AdamW (step t counts from 1); returns the gradient norm. With
  // several ranks it first sums the replicated gradients over ranks, and the norm counts every rank's
  // experts once.
  float step(double lr, int64_t t);

  // Router statistics of the last forward, one entry per MoE layer (empty for dense models), and the
  // auxiliary losses they add to the objective (GPT<T>::aux_loss(): coefficient-weighted, summed).
  const std::vector<MoeLayerStats>& moe_stats() const { return moe_stats_; }
  double aux_loss() const;

  // Device bytes: parameters + gradients + optimizer state, and the activation arena.
  size_t param_bytes() const { return param_bytes_; }
  size_t activation_bytes() const { return act_bytes_; }

 private:
  struct Layer;  // one block's parameter views and saved activations
  void layout(bool allocate);
  void moe_forward(Layer& L, MoeLayerStats& st, bool noisy);
  void draw_gate_noise(Rng& rng, Layer& L);
  void moe_backward(Layer& L, const T* dy);
  // Expert parallelism (W > 1): the routed branch through the ranks, and its helpers.
  void moe_forward_ep(Layer& L, MoeLayerStats& st);
  void moe_backward_ep(Layer& L, const T* dy);
  void reduce_router_stats(Layer& L, MoeLayerStats& st);
  void exchange_rows(const Layer& L, const T* src, T* dst, bool toward_experts);

  ModelConfig mc_;
  OptimConfig oc_;
  const ParamTable& table_;
  int B_, Tn_, C_, V_, F_, N_;
  // MoE: experts, top-k, expert hidden size, rows per expert; the router's loss coefficients
  int E_ = 0, k_ = 0, Fe_ = 0;
  int64_t capacity_ = 0;
  Communicator* comm_ = nullptr;
  int W_ = 1, rank_ = 0, El_ = 0, first_expert_ = 0;  // ranks; local experts and the first one's index
  bool renormalize_ = true, noise_ = false;
  double aux_coef_ = 0, z_coef_ = 0;
  cudaStream_t stream_;
  int attention_path_ = 0;  // AttentionPath as an int (this header does not need the enum)
  // One allocation each: fp32 master params, fp32 grads, m, v; the T copy of the weights (bf16 only);
  // the activation arena.
  float *params_ = nullptr, *grads_ = nullptr, *m_ = nullptr, *v_ = nullptr;
  T* params_t_ = nullptr;
  char* arena_ = nullptr;
  size_t param_bytes_ = 0, act_bytes_ = 0, arena_used_ = 0;
  std::vector<Layer> layers_;
  // activations and scratch
  int32_t *inputs_ = nullptr, *targets_ = nullptr;
  std::vector<T*> resid_;
  T *lnf_out_ = nullptr, *logits_ = nullptr, *dresid_ = nullptr, *dnorm_ = nullptr, *datty_ = nullptr;
  T *dqkv_ = nullptr, *dh_ = nullptr, *dg_ = nullptr, *att_scratch_ = nullptr;
  size_t wte_ = 0, wpe_ = 0, lnf_w_ = 0, lnf_b_ = 0;  // offsets of the top-level tensors
  float *lnf_mean_ = nullptr, *lnf_rstd_ = nullptr, *losses_ = nullptr, *loss_ = nullptr;
  float *att_scratch_f32_ = nullptr, *clip_ = nullptr;
  // MoE scratch (shared by the layers): the routed output, backward buffers, the plan's offsets
  T *moe_out_ = nullptr, *dse_ = nullptr, *dmoe_y_ = nullptr, *dz_ = nullptr, *dmoe_x_ = nullptr;
  T *dlogits_ = nullptr, *dye_ = nullptr, *dxe_ = nullptr;
  float *dgate_ = nullptr, *pmean_ = nullptr;
  int64_t* plan_offsets_ = nullptr;
  std::vector<MoeLayerStats> moe_stats_;
  std::vector<int64_t> host_stats_;  // one layer's counts, drops and losses as copied from the device
  std::vector<float> host_eps_;      // gate noise of every MoE layer, drawn on the host: [MoE layers, N, E]
  float* noise_eps_ = nullptr;       // ... and on the device
  double* norm_scratch_ = nullptr;
  // Expert parallelism: send-order rows (and their gradients), receive-order rows, count and router
  // statistics staging for the collectives (device memory: NCCL reads and writes only that).
  T *xs_ = nullptr, *xr_ = nullptr, *yr_ = nullptr;
  int64_t *send_bucket_ = nullptr, *recv_bucket_ = nullptr;
  double* router_sums_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  void* chunks_ = nullptr;  // ParamChunk table on the device
  int num_chunks_ = 0;
  float grad_scale_ = 0;
  template <class U>
  U* take(size_t n, bool allocate);
};

SCMOE_CUDA_END
