// ScMoE combine coefficients on the device (twin of kernels/cpu/gates.h): cg1 scales the shared
// expert's output by sigmoid(z) per token; cg2 weights (shared expert, routed experts) by a softmax over
// two logits. The logits z and their gradient dz use the storage type T (they come from and go to a
// matmul), as do the rows; the saved coefficients are fp32. One warp per token row.
#pragma once
#include <cstdint>

#include "kernels/cuda/abi.h"

SCMOE_CUDA_BEGIN

// out[n] = sigmoid(z[n]) * se[n] (rows of C); coef[n] = sigmoid(z[n]) saved.
template <class T>
void cg1_forward(T* out, float* coef, const T* z, const T* se, int N, int C, cudaStream_t stream);
// dse = coef * dout; dz[n] = coef (1 - coef) * dot(dout[n], se[n]).
template <class T>
void cg1_backward(T* dse, T* dz, const T* dout, const float* coef, const T* se, int N, int C,
                  cudaStream_t stream);

// alpha[n,:] = softmax(z[n, 0:2]); out[n] = alpha0 * se[n] + alpha1 * moe[n].
template <class T>
void cg2_forward(T* out, float* alpha, const T* z, const T* se, const T* moe, int N, int C,
                 cudaStream_t stream);
// dse = alpha0 dout, dmoe = alpha1 dout, dz[n] = (g, -g) with g = alpha0 alpha1 (dot(dout, se) - dot(dout,
// moe)).
template <class T>
void cg2_backward(T* dse, T* dmoe, T* dz, const T* dout, const float* alpha, const T* se, const T* moe, int N,
                  int C, cudaStream_t stream);

SCMOE_CUDA_END
