// Causal multi-head self-attention core on the device; twin of kernels/cpu/attention.h. qkv: [B, T, 3C]
// (q, k, v; head h uses channels [h*hd, (h+1)*hd) of each), out: [B, T, C], dqkv overwritten. T is the
// storage type (float or bf16); arithmetic is fp32. Two implementations:
//  (a) gemm_softmax (llm.c's): permute to per-head q, k, v, scores by a batched GEMM, a fused causal
//      softmax, att @ v by a batched GEMM, permute back. Saves the [B, H, T, T] probabilities: fast
//      (tensor cores through cuBLASLt) but quadratic in memory.
//  (b) flash: fused tiled kernels with an online softmax; saves only the logsumexp per row, no T x T
//      matrix. The memory-efficient path for long sequences (its products run on the SIMT cores).
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/abi.h"

SCMOE_CUDA_BEGIN

enum class AttentionPath { gemm_softmax, flash };

// Head sizes the flash kernels are instantiated for (the gemm path takes any).
bool flash_attention_supports(int head_size);

// Element counts of the buffers a path needs. `saved*` live from the forward to the backward;
// `scratch*` only during one call (the same scratch may serve forward and backward).
struct AttentionBufferSizes {
  size_t saved = 0;        // elements of T
  size_t saved_f32 = 0;    // floats
  size_t scratch = 0;      // elements of T
  size_t scratch_f32 = 0;  // floats
};
AttentionBufferSizes attention_buffer_sizes(AttentionPath path, int B, int Tn, int C, int H);

template <class T>
struct AttentionBuffers {
  T* saved = nullptr;
  float* saved_f32 = nullptr;
  T* scratch = nullptr;
  float* scratch_f32 = nullptr;
};

// The selector: runs path (a) or (b) with buffers sized by attention_buffer_sizes.
template <class T>
void attention_forward(AttentionPath path, T* out, const T* qkv, const AttentionBuffers<T>& buf, int B,
                       int Tn, int C, int H, cudaStream_t stream);
// `out` is the forward's output (path (b) needs it).
template <class T>
void attention_backward(AttentionPath path, T* dqkv, const T* dout, const T* qkv, const T* out,
                        const AttentionBuffers<T>& buf, int B, int Tn, int C, int H, cudaStream_t stream);

// Path (a). Saved: qkvr [3][B][H][T][hd] (q, k, v per head) and att [B][H][T][T]: row (b, h, t) holds the
// softmax probabilities over keys t2 <= t and zeros for t2 > t (the CPU reference's layout).
// Forward scratch: B*T*C elements; backward scratch: 4*B*T*C + B*H*T*T elements.
template <class T>
void attention_forward_gemm(T* out, T* qkvr, T* att, T* scratch, const T* qkv, int B, int Tn, int C, int H,
                            cudaStream_t stream);
template <class T>
void attention_backward_gemm(T* dqkv, T* scratch, const T* dout, const T* qkvr, const T* att, int B, int Tn,
                             int C, int H, cudaStream_t stream);

// Path (b). lse: [B][H][T] fp32, the logsumexp of each row's scaled scores (saved for the backward).
// delta: [B][H][T] fp32 scratch of the backward (rowsum(dout * out) per head).
template <class T>
void attention_forward_flash(T* out, float* lse, const T* qkv, int B, int Tn, int C, int H,
                             cudaStream_t stream);
template <class T>
void attention_backward_flash(T* dqkv, float* delta, const T* dout, const T* qkv, const T* out,
                              const float* lse, int B, int Tn, int C, int H, cudaStream_t stream);

// The decode step of generation (twin of cpu::attention_decode): one query q [C] (the newest position)
// over a KV cache k, v [Tk, C] (the newest included). att: [H, Tk] fp32, the softmax probabilities
// (scratch the caller keeps); out: [C]. One block per head.
template <class T>
void attention_decode(T* out, float* att, const T* q, const T* k, const T* v, int Tk, int C, int H,
                      cudaStream_t stream);

SCMOE_CUDA_END
