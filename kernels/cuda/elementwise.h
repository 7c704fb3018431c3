// Elementwise helpers of the residual stream on the device (twin of kernels/cpu/elementwise.h), the
// fused residual + norm forward (llm.c's fused_residual_forward), and the bias gradient of the matmul
// backward. T is the storage type (float or bf16); arithmetic is fp32.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/abi.h"

SCMOE_CUDA_BEGIN

template <class T>
void add(T* out, const T* a, const T* b, int64_t n, cudaStream_t stream);  // out = a + b
template <class T>
void add_inplace(T* y, const T* x, int64_t n, cudaStream_t stream);  // y += x
template <class T>
void copy(T* y, const T* x, int64_t n, cudaStream_t stream);  // y = x
template <class T>
void fill(T* y, float v, int64_t n, cudaStream_t stream);  // y = v (rounded to T)
template <class T>
void scale(T* y, float s, int64_t n, cudaStream_t stream);  // y *= s
template <class T>
void convert_from_f32(T* dst, const float* src, int64_t n, cudaStream_t stream);  // dst = src rounded to T

// resid = a + b (rounded to T), then out = layernorm(resid) with fp32 statistics mean/rstd, exactly
// as layernorm_forward(out, mean, rstd, resid, w, bias) would give (kernels/cuda/norm.h).
template <class T>
void fused_residual_layernorm_forward(T* resid, T* out, float* mean, float* rstd, const T* a, const T* b,
                                      const T* w, const T* bias, int N, int C, cudaStream_t stream);
// resid = a + b, then out = rmsnorm(resid), as rmsnorm_forward(out, rstd, resid, w) would give.
template <class T>
void fused_residual_rmsnorm_forward(T* resid, T* out, float* rstd, const T* a, const T* b, const T* w, int N,
                                    int C, cudaStream_t stream);

// dbias[c] += sum over n of dout[n, c] (dout is [N, OC]), fp32 sums, deterministic: per-block partial
// sums go to a caller-provided workspace of at least bias_backward_workspace_bytes(N, OC) bytes
// (16-byte aligned; the launcher checks the size and throws if it is short) and are then added in a
// fixed order.
size_t bias_backward_workspace_bytes(int N, int OC);
template <class T>
void bias_backward(float* dbias, const T* dout, int N, int OC, void* workspace, size_t workspace_bytes,
                   cudaStream_t stream);

SCMOE_CUDA_END
