// AdamW over the flat fp32 master-parameter buffer in one launch, and the deterministic global gradient
// norm and clip factor, all on the device; twin of optim/adamw.h (same update, same clipping formula).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/config.h"
#include "core/params.h"
#include "kernels/cuda/abi.h"

SCMOE_CUDA_BEGIN

// A piece of the parameter buffer that one block updates: [offset, offset + length) inside one tensor,
// so it has one weight-decay flag. `group` splits the gradient norm (0 replicated, 1 routed-expert
// tensors, whose squares the trainer all-reduces across ranks).
struct ParamChunk {
  int64_t offset;
  int32_t length;
  int16_t decay;
  int16_t group;
};

// A tensor's place in the buffer (ParamSpec without the rest); elements outside every range are never
// touched (the ParamTable's alignment padding).
struct ParamRange {
  size_t offset, numel;
  bool decay;
  bool expert = false;
};

constexpr int kParamChunk = 4096;     // elements per chunk (16 per thread of a 256-thread block)
constexpr int kNormGroups = 2;        // replicated, expert
constexpr int kNormMaxBlocks = 1024;  // fixed upper bound of the norm's grid: partials need this many

// Splits ranges into chunks of at most `max_chunk` elements at multiples of max_chunk (so interior
// chunks start 16-byte aligned) and at range ends. Built once on the host, uploaded once.
std::vector<ParamChunk> param_chunks(const std::vector<ParamRange>& ranges, int max_chunk = kParamChunk);
std::vector<ParamChunk> param_chunks(const ParamTable& table, int max_chunk = kParamChunk);

enum class Bf16Rounding { nearest, stochastic };

// One AdamW step, exactly AdamW<T>::step's formula in fp32: gradients times *grad_mult (nullptr: 1),
// m and v updated, bias correction with t (1 for the first step: AdamW<T>::t() after its step),
// decoupled weight decay cfg.weight_decay on chunks with decay set. When params_bf16 is not null the
// updated parameters are also written there as bf16, rounded to nearest or stochastically; the
// stochastic choice depends only on (seed, t, element index), never on the launch shape.
void adamw_step(float* params, float* m, float* v, const float* grads, bf16* params_bf16,
                const ParamChunk* chunks, int num_chunks, const OptimConfig& cfg, double lr, int64_t t,
                const float* grad_mult, Bf16Rounding rounding, uint64_t seed, cudaStream_t stream);

// Doubles of scratch the norm functions need (one partial per block and group, then global_norm's sum).
constexpr size_t grad_norm_scratch() { return size_t(kNormMaxBlocks) * kNormGroups + kNormGroups; }

// out_sq[0] = sum of g[i]^2 over [0, n), in double. Deterministic: fixed per-block partials, summed in
// order by one block; bit-identical from run to run. `scratch` holds grad_norm_scratch() doubles.
void grad_norm_squared(double* out_sq, double* scratch, const float* g, int64_t n, cudaStream_t stream);
// The same over chunks: out_sq[group] for group 0 and 1 (elements outside the chunks do not count).
void grad_norm_squared(double* out_sq, double* scratch, const float* g, const ParamChunk* chunks,
                       int num_chunks, cudaStream_t stream);

// The trainer's clip factor on the device: norm = sqrt(sq[0] + ... + sq[n_sq - 1]) (summed in that
// order), mult = grad_clip > 0 && norm > grad_clip ? grad_clip / norm : 1. Writes *out_norm (may be
// null) and *out_mult as floats, computed in double.
void grad_clip_mult(float* out_mult, float* out_norm, const double* sq, int n_sq, double grad_clip,
                    cudaStream_t stream);

// sqrt(sum of squares) of g[0..n) into *out_norm: grad_norm_squared then grad_clip_mult's norm.
void global_norm(float* out_norm, double* scratch, const float* g, int64_t n, cudaStream_t stream);

SCMOE_CUDA_END
