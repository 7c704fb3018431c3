// Token + position embedding on the device: out[b,t,:] = wte[idx[b,t],:] + wpe[t,:]; twin of
// kernels/cpu/encoder.h. T is the storage type of activations and weights (float or bf16).
//
// The backward accumulates (+=) into fp32 gradient buffers dwte [V, C] and dwpe [Tn, C] whatever T
// is, deterministically and without float atomics: the B*Tn positions are bucketed by token id on the
// device (a counting sort, positions ascending within each bucket), then each bucket's rows of dout are
// summed in position order by one thread per channel. The bucketing needs a caller-provided workspace
// of at least encoder_backward_workspace_bytes(B, Tn, V) bytes of device memory (4-byte aligned); the
// launcher checks the size and throws if it is short. Token ids must lie in [0, V).
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/abi.h"

SCMOE_CUDA_BEGIN

template <class T>
void encoder_forward(T* out, const int32_t* idx, const T* wte, const T* wpe, int B, int Tn, int C,
                     cudaStream_t stream);

size_t encoder_backward_workspace_bytes(int B, int Tn, int V);
template <class T>
void encoder_backward(float* dwte, float* dwpe, const T* dout, const int32_t* idx, int B, int Tn, int C,
                      int V, void* workspace, size_t workspace_bytes, cudaStream_t stream);

SCMOE_CUDA_END
