// Fused softmax + cross-entropy + gradient: from logits [N, V] and targets, returns the mean loss and
// writes dlogits = (softmax - onehot) * grad_scale in place of the logits, never storing the
// probabilities separately. losses[n] receives each position's loss (for reporting).
#pragma once
#include <cstdint>

namespace scmoe::cpu {

template <class T>
double crossentropy_forward_backward(T* logits_to_dlogits, T* losses, const int32_t* targets, int N,
                                     int V, T grad_scale, bool want_grad);

}  // namespace scmoe::cpu
