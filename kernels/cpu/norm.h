// LayerNorm and RMSNorm over the last dimension (eps 1e-5). Forward saves per-row statistics
// (mean, rstd) that backward reuses. Weight/bias gradients are accumulated.
#pragma once

namespace scmoe::cpu {

constexpr double kNormEps = 1e-5;

template <class T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* w, const T* b, int N, int C);
template <class T>
void layernorm_backward(T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w, const T* mean,
                        const T* rstd, int N, int C, bool accumulate_dinp);

template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* w, int N, int C);
template <class T>
void rmsnorm_backward(T* dinp, T* dw, const T* dout, const T* inp, const T* w, const T* rstd, int N,
                      int C, bool accumulate_dinp);

}  // namespace scmoe::cpu
