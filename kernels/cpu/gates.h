// ScMoE combine coefficients (docs/design.md section 3): cg1 scales the shared expert's output by
// sigmoid(v . w) per token; cg2 weights (shared expert, routed experts) by a softmax over two logits
// v . W[0], v . W[1]. The logits come from a separate matmul; these are the pointwise parts.
#pragma once
#include <cstdint>

namespace scmoe::cpu {

// out[n] = sigmoid(z[n]) * se[n] (rows of C); coef[n] = sigmoid(z[n]) saved. The routed output is
// added by the caller (its gradient is dout itself).
template <class T>
void cg1_forward(T* out, T* coef, const T* z, const T* se, int N, int C);
// dse = coef * dout; dz[n] = coef(1-coef) * dot(dout[n], se[n]).
template <class T>
void cg1_backward(T* dse, T* dz, const T* dout, const T* coef, const T* se, int N, int C);

// alpha[n,:] = softmax(z[n, 0:2]); out[n] = alpha0 * se[n] + alpha1 * moe[n].
template <class T>
void cg2_forward(T* out, T* alpha, const T* z, const T* se, const T* moe, int N, int C);
// dse = alpha0 dout, dmoe = alpha1 dout, dz[n,:] from the softmax.
template <class T>
void cg2_backward(T* dse, T* dmoe, T* dz, const T* dout, const T* alpha, const T* se, const T* moe, int N,
                  int C);

}  // namespace scmoe::cpu
