// CPU reference for linear layers on top of CBLAS (OpenBLAS in practice).
#include "kernels/cpu/matmul.h"

#include <cblas.h>

#include <algorithm>
#include <cstdint>

namespace scmoe::cpu {

namespace {
CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }
}  // namespace

template <>
void gemm<float>(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, tr(ta), tr(tb), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <>
void gemm<double>(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda,
                  const double* B, int ldb, double beta, double* C, int ldc) {
  cblas_dgemm(CblasRowMajor, tr(ta), tr(tb), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <class T>
void matmul_forward(T* out, const T* inp, const T* W, const T* bias, int N, int IC, int OC) {
  if (N == 0) return;
  gemm<T>(false, true, N, OC, IC, T(1), inp, IC, W, IC, T(0), out, OC);
  if (!bias) return;
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    T* o = out + (int64_t)n * OC;
    for (int c = 0; c < OC; c++) o[c] += bias[c];
  }
}

template <class T>
void matmul_backward(T* dinp, T* dW, T* dbias, const T* dout, const T* inp, const T* W, int N, int IC,
                     int OC, bool accumulate_dinp) {
  if (N == 0) return;
  if (dinp) gemm<T>(false, false, N, IC, OC, T(1), dout, OC, W, IC, T(accumulate_dinp), dinp, IC);
  gemm<T>(true, false, OC, IC, N, T(1), dout, OC, inp, IC, T(1), dW, IC);
  if (!dbias) return;
  constexpr int kChunk = 16;  // each thread sums its own channels over rows in a fixed order
#pragma omp parallel for schedule(static)
  for (int c0 = 0; c0 < OC; c0 += kChunk) {
    int c1 = std::min(OC, c0 + kChunk);
    for (int n = 0; n < N; n++) {
      const T* d = dout + (int64_t)n * OC;
      for (int c = c0; c < c1; c++) dbias[c] += d[c];
    }
  }
}

template void matmul_forward<float>(float*, const float*, const float*, const float*, int, int, int);
template void matmul_forward<double>(double*, const double*, const double*, const double*, int, int, int);
template void matmul_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                     int, int, int, bool);
template void matmul_backward<double>(double*, double*, double*, const double*, const double*,
                                      const double*, int, int, int, bool);

}  // namespace scmoe::cpu
