// The GPT on the CUDA backend (llm.c's train_gpt2.cu shape): parameters, gradients and activations in
// device memory, the forward and backward passes as sequences of our kernels (kernels/cuda/), AdamW and
// the global gradient norm on the device. T is the activation/weight storage type: float (fp32) or
// bf16 (bf16 weights and activations; fp32 master weights, gradients, optimizer state, norm
// statistics and losses). Tensor names and offsets come from the CPU model's ParamTable, so
// checkpoints and initialisation are shared with the CPU backend.
//
// Built twice like the kernels: natively (scmoe_cuda) and under the SIMT emulation, where "device"
// memory is host memory and the same code trains in CI (tests/emu/gpt_cuda.cpp compares it with the
// CPU backend). Today: model.arch dense; the MoE family on the device is not written yet.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cuda/abi.h"
#include "model/params.h"
#include "train/config.h"

SCMOE_CUDA_BEGIN

template <class T>
class GptCuda {
 public:
  // `table`: the CPU model's parameter table (GPT<float>::table()); B sequences of model.seq_len.
  // attention: 0 = llm.c's GEMM + fused softmax path (tensor cores; saves the T x T probabilities),
  // 1 = the fused flash-style kernels (no T x T matrix), -1 = auto (flash from seq_len 2048 on).
  GptCuda(const Config& cfg, const ParamTable& table, int B, cudaStream_t stream = nullptr, int attention = -1);
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
  // grad_scale > 0 the output gradient is prepared for backward().
  float forward(const int32_t* inputs, const int32_t* targets, float grad_scale);
  void backward();
  // Clips to optim.grad_clip and applies AdamW (step t counts from 1); returns the gradient norm.
  float step(double lr, int64_t t);

  // Device bytes: parameters + gradients + optimizer state, and the activation arena.
  size_t param_bytes() const { return param_bytes_; }
  size_t activation_bytes() const { return act_bytes_; }

 private:
  struct Layer;  // one block's parameter views and saved activations
  void layout(bool allocate);

  ModelConfig mc_;
  OptimConfig oc_;
  const ParamTable& table_;
  int B_, Tn_, C_, V_, F_, N_;
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
  float *lnf_mean_ = nullptr, *lnf_rstd_ = nullptr, *losses_ = nullptr, *loss_ = nullptr;
  float *att_scratch_f32_ = nullptr, *clip_ = nullptr;
  double* norm_scratch_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  void* chunks_ = nullptr;  // ParamChunk table on the device
  int num_chunks_ = 0;
  float grad_scale_ = 0;
  template <class U>
  U* take(size_t n, bool allocate);
};

SCMOE_CUDA_END
