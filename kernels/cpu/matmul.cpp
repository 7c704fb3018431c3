// CPU reference for linear layers on top of CBLAS (OpenBLAS in practice).
#include "kernels/cpu/matmul.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace scmoe::cpu {

// OpenBLAS's own thread pool fights OpenMP's for the same cores (a training step ran 3-5x slower with
// both active), so BLAS runs single-threaded and gemm() splits the rows of C over OpenMP threads itself.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace {
CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }

void blas_single_threaded() {
  static const bool once = [] {
    if (openblas_set_num_threads) openblas_set_num_threads(1);
    return true;
  }();
  (void)once;
}

void blas(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
          float beta, float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, tr(ta), tr(tb), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void blas(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda, const double* B, int ldb,
          double beta, double* C, int ldc) {
  cblas_dgemm(CblasRowMajor, tr(ta), tr(tb), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
}  // namespace

template <class T>
void gemm(bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda, const T* B, int ldb, T beta, T* C,
          int ldc) {
  blas_single_threaded();
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const int chunks = std::max(1, std::min(threads, M / 32));  // tiny products are not worth splitting
  if (chunks == 1) return blas(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  // Row block [m0, m1) of C needs rows m0.. of op(A): rows of A, or columns of A when transposed.
#pragma omp parallel for schedule(static) num_threads(chunks)
  for (int c = 0; c < chunks; c++) {
    int m0 = int((int64_t)M * c / chunks), m1 = int((int64_t)M * (c + 1) / chunks);
    const T* a = ta ? A + m0 : A + (int64_t)m0 * lda;
    blas(ta, tb, m1 - m0, N, K, alpha, a, lda, B, ldb, beta, C + (int64_t)m0 * ldc, ldc);
  }
}

template void gemm<float>(bool, bool, int, int, int, float, const float*, int, const float*, int, float, float*,
                          int);
template void gemm<double>(bool, bool, int, int, int, double, const double*, int, const double*, int, double,
                           double*, int);

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
