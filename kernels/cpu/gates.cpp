// CPU reference for the ScMoE combine coefficients cg1 / cg2 (see gates.h). The sigmoid / two-way
// softmax and the per-token dot products run in double, so float matches the float64 reference closely.
#include "kernels/cpu/gates.h"

#include <cmath>

namespace scmoe::cpu {

namespace {
// Branches so exp never overflows: exp of a non-positive argument only.
double sigmoid(double z) {
  if (z >= 0) return 1.0 / (1.0 + std::exp(-z));
  double e = std::exp(z);
  return e / (1.0 + e);
}
}  // namespace

template <class T>
void cg1_forward(T* out, T* coef, const T* z, const T* se, int N, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    T s = T(sigmoid(double(z[n])));
    coef[n] = s;
    const T* x = se + (int64_t)n * C;
    T* o = out + (int64_t)n * C;
    for (int c = 0; c < C; c++) o[c] = s * x[c];
  }
}

template <class T>
void cg1_backward(T* dse, T* dz, const T* dout, const T* coef, const T* se, int N, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    T s = coef[n];
    const T* d = dout + (int64_t)n * C;
    const T* x = se + (int64_t)n * C;
    T* dx = dse + (int64_t)n * C;
    double dot = 0;
    for (int c = 0; c < C; c++) {
      dx[c] = s * d[c];
      dot += double(d[c]) * double(x[c]);
    }
    dz[n] = T(double(s) * (1.0 - double(s)) * dot);
  }
}

template <class T>
void cg2_forward(T* out, T* alpha, const T* z, const T* se, const T* moe, int N, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    // A softmax over two logits is a sigmoid of their difference (no max shift needed); each weight
    // gets its own sigmoid because 1 - a0 would cancel to nothing when a0 is near 1.
    double dzl = double(z[2 * (int64_t)n]) - double(z[2 * (int64_t)n + 1]);
    T w0 = T(sigmoid(dzl)), w1 = T(sigmoid(-dzl));
    alpha[2 * (int64_t)n] = w0;
    alpha[2 * (int64_t)n + 1] = w1;
    const T* x0 = se + (int64_t)n * C;
    const T* x1 = moe + (int64_t)n * C;
    T* o = out + (int64_t)n * C;
    for (int c = 0; c < C; c++) o[c] = w0 * x0[c] + w1 * x1[c];
  }
}

template <class T>
void cg2_backward(T* dse, T* dmoe, T* dz, const T* dout, const T* alpha, const T* se, const T* moe, int N,
                  int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    T w0 = alpha[2 * (int64_t)n], w1 = alpha[2 * (int64_t)n + 1];
    const T* d = dout + (int64_t)n * C;
    const T* x0 = se + (int64_t)n * C;
    const T* x1 = moe + (int64_t)n * C;
    T* d0 = dse + (int64_t)n * C;
    T* d1 = dmoe + (int64_t)n * C;
    double da0 = 0, da1 = 0;
    for (int c = 0; c < C; c++) {
      d0[c] = w0 * d[c];
      d1[c] = w1 * d[c];
      da0 += double(d[c]) * double(x0[c]);
      da1 += double(d[c]) * double(x1[c]);
    }
    // Two-way softmax backward: dz_i = a_i (da_i - sum_j a_j da_j), i.e. dz_0 = -dz_1 = a0 a1 (da0 - da1).
    double g = double(w0) * double(w1) * (da0 - da1);
    dz[2 * (int64_t)n] = T(g);
    dz[2 * (int64_t)n + 1] = T(-g);
  }
}

template void cg1_forward<float>(float*, float*, const float*, const float*, int, int);
template void cg1_forward<double>(double*, double*, const double*, const double*, int, int);
template void cg1_backward<float>(float*, float*, const float*, const float*, const float*, int, int);
template void cg1_backward<double>(double*, double*, const double*, const double*, const double*, int, int);
template void cg2_forward<float>(float*, float*, const float*, const float*, const float*, int, int);
template void cg2_forward<double>(double*, double*, const double*, const double*, const double*, int, int);
template void cg2_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                  const float*, int, int);
template void cg2_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                   const double*, int, int);

}  // namespace scmoe::cpu
