// LayerNorm and RMSNorm over the last dimension on the device (eps 1e-5); twin of kernels/cpu/norm.h.
// T is the storage type of activations and weights (float or bf16); statistics (mean, rstd) are fp32,
// and the weight/bias gradients are accumulated (+=) into fp32 buffers.
//
// Backward is deterministic: each block sums dw/db over its rows into its own slice of a workspace,
// and a second kernel adds the slices to dw/db in a fixed order (no float atomics). The caller
// provides the workspace: at least norm_backward_workspace_bytes(N, C) bytes of device memory,
// 16-byte aligned (cudaMalloc'd memory is); the launchers check the size and throw if it is short.
#pragma once
#include <cstddef>

#include "kernels/cuda/abi.h"

SCMOE_CUDA_BEGIN

// Bytes of workspace layernorm_backward / rmsnorm_backward need for N rows of C channels.
size_t norm_backward_workspace_bytes(int N, int C);

template <class T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* inp, const T* w, const T* b, int N, int C,
                       cudaStream_t stream);
// dinp = (or += when accumulate_dinp) the input gradient; dw += sum_n dout*xhat, db += sum_n dout.
template <class T>
void layernorm_backward(T* dinp, float* dw, float* db, const T* dout, const T* inp, const T* w,
                        const float* mean, const float* rstd, int N, int C, bool accumulate_dinp,
                        void* workspace, size_t workspace_bytes, cudaStream_t stream);

template <class T>
void rmsnorm_forward(T* out, float* rstd, const T* inp, const T* w, int N, int C, cudaStream_t stream);
template <class T>
void rmsnorm_backward(T* dinp, float* dw, const T* dout, const T* inp, const T* w, const float* rstd, int N,
                      int C, bool accumulate_dinp, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream);

SCMOE_CUDA_END
