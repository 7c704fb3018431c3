// Token + position embedding: out[b,t,:] = wte[idx[b,t],:] + wpe[t,:].
#pragma once
#include <cstdint>

namespace scmoe::cpu {

template <class T>
void encoder_forward(T* out, const int32_t* idx, const T* wte, const T* wpe, int B, int Tn, int C);

// Accumulates into dwte and dwpe. Deterministic: each thread owns a slice of channels and walks the
// positions in order, so no two threads add into the same element and the order never changes.
template <class T>
void encoder_backward(T* dwte, T* dwpe, const T* dout, const int32_t* idx, int B, int Tn, int C);

}  // namespace scmoe::cpu
