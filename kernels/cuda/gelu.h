// GELU (tanh approximation) forward and backward on the device; twin of kernels/cpu/gelu.h.
// T is the storage type (float or bf16); arithmetic is fp32.
#pragma once
#include <cstdint>

#include "kernels/cuda/abi.h"

SCMOE_CUDA_BEGIN
template <class T>
void gelu_forward(T* out, const T* inp, int64_t n, cudaStream_t stream);
template <class T>
void gelu_backward(T* dinp, const T* inp, const T* dout, int64_t n, cudaStream_t stream);
SCMOE_CUDA_END
