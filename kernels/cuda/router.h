// MoE router math on the device (twin of kernels/cpu/router.h; RouterSpec in kernels/backend_types.h):
// softmax or sigmoid scores over gate logits [N,E], top-k on score + expert bias with ties to the lower
// expert index, gates (renormalised over the k), per-expert counts and mean normalised scores, the
// load-balance (aux), z and sequence-level losses, and the backward to the logits.
// Logits and their gradient use the storage type T (float or bf16: they come from and go to a
// matmul); everything the router derives (scores, gates, pmean, losses) is fp32. All sums are
// in a fixed order, so results are identical run to run.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/backend_types.h"
#include "kernels/cuda/abi.h"

SCMOE_CUDA_BEGIN

// One warp handles a token row, each lane holding up to 8 of its experts in registers.
constexpr int kRouterMaxExperts = 256;

// Scratch the forward needs for its deterministic two-stage reductions and the sequence statistics
// (bytes, ~0.5 MB + 8 bytes per token).
size_t router_forward_workspace_bytes(int N, int E);

// Test hook: caps the forward's grid (default 256 blocks of 8 rows, rows beyond that loop within
// each warp) so that emulated tests reach that loop with few rows; 0 restores the default.
void router_testing_set_block_cap(int cap);

// probs [N,E] = the scores (saved for backward), topk_idx [N,k], topk_gate [N,k]; pmean [E] = mean_n of
// the normalised scores q, counts [E] = assignments to e before capacity, seq_counts [N/seq_len, E]
// (r.seq_len > 0); losses [3] = {aux, z, seq} (0 when N = 0). `workspace` holds
// router_forward_workspace_bytes(N, E) bytes. Requires 1 <= k <= E <= 256.
template <class T>
void router_forward(const T* logits, int N, const RouterSpec& r, float* probs, int32_t* topk_idx,
                    float* topk_gate, float* pmean, int64_t* counts, int32_t* seq_counts, float* losses,
                    void* workspace, cudaStream_t stream);

// dlogits [N,E] (overwritten) from dgate [N,k] plus sc.aux * d(aux)/dlogits + sc.z * d(z)/dlogits +
// sc.seq * d(seq)/dlogits, as in the CPU reference (counts treated as constants; logits read only when
// the z-loss is on or the scores are sigmoids).
template <class T>
void router_backward(T* dlogits, const float* dgate, const T* logits, const float* probs,
                     const int32_t* topk_idx, const int64_t* counts, const int32_t* seq_counts, int N,
                     const RouterSpec& r, const RouterGradScales& sc, cudaStream_t stream);

// cpu::expert_bias_update and cpu::add_counts on the device (one thread: E values, the CPU's
// arithmetic in double, so both backends' biases are equal bit for bit).
void expert_bias_update(float* bias, int64_t* load, int E, double rate, bool center, cudaStream_t stream);
void add_counts(int64_t* load, const int64_t* counts, int E, cudaStream_t stream);

// Noisy top-k gating (Shazeer et al.; the CPU's MoE<T>::add_gate_noise), elementwise over n = N*E:
// logits += eps * softplus(noise_pre), with noise_pre = x . W_noise and eps ~ N(0,1) drawn on the host
// (so that the noise is the CPU backend's, token for token). The backward turns dlogits into the
// gradient of noise_pre in place: dlogits *= eps * sigmoid(noise_pre).
template <class T>
void gate_noise_forward(T* logits, const T* noise_pre, const float* eps, int64_t n, cudaStream_t stream);
template <class T>
void gate_noise_backward(T* dlogits, const T* noise_pre, const float* eps, int64_t n, cudaStream_t stream);

// The router's statistics over ranks (cpu::router_stats_pack / unpack, same arithmetic in double):
// pack buf[2E+2] = {counts[e], N * pmean[e], N * z, S * seq} for an all-reduce; unpack the global counts
// (for the backward) and losses[0..2] = {aux, z, seq} over N_global tokens and S_global sequences.
void router_stats_pack(double* buf, const int64_t* counts, const float* pmean, const float* losses, int N, int64_t S,
                       int E, cudaStream_t stream);
void router_stats_unpack(int64_t* counts, float* losses, const double* buf, int64_t N_global, int64_t S_global, int k,
                         int E, cudaStream_t stream);

SCMOE_CUDA_END
