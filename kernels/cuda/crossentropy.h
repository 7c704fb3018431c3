// Fused softmax + cross-entropy + gradient on the device; twin of kernels/cpu/crossentropy.h.
// From logits [N, V] (storage T: float or bf16) and targets, writes losses[n] = logsumexp(row) -
// logit[target] (fp32) and, when want_grad, overwrites the logits with (softmax - onehot) * grad_scale,
// never storing the probabilities separately. A target outside [0, V) gives a NaN loss (and a plain
// softmax gradient), so the mistake shows in the reported loss.
#pragma once
#include <cstdint>

#include "kernels/cuda/abi.h"

SCMOE_CUDA_BEGIN

template <class T>
void crossentropy_forward_backward(T* logits_to_dlogits, float* losses, const int32_t* targets, int N, int V,
                                   float grad_scale, bool want_grad, cudaStream_t stream);

// mean_loss[0] = (sum of losses[0..N)) / N, summed on the device in a fixed order (deterministic).
void crossentropy_mean_loss(float* mean_loss, const float* losses, int N, cudaStream_t stream);

SCMOE_CUDA_END
