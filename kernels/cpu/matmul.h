// Linear layers through BLAS: out[N,OC] = inp[N,IC] @ W[OC,IC]^T + bias. Row-major throughout.
#pragma once

namespace scmoe::cpu {

// C[M,N] = alpha * op(A) @ op(B) + beta * C, row-major, op = transpose when the flag is set.
template <class T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda, const T* B,
          int ldb, T beta, T* C, int ldc);

// bias may be null.
template <class T>
void matmul_forward(T* out, const T* inp, const T* W, const T* bias, int N, int IC, int OC);

// dW (and dbias when non-null) are accumulated. dinp is overwritten, or accumulated when
// `accumulate_dinp`; it may be null when the input needs no gradient.
template <class T>
void matmul_backward(T* dinp, T* dW, T* dbias, const T* dout, const T* inp, const T* W, int N, int IC,
                     int OC, bool accumulate_dinp);

}  // namespace scmoe::cpu
