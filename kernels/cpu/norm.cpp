// CPU reference for LayerNorm / RMSNorm (see norm.h). Statistics in double whatever T, so float
// training matches the float64 reference closely.
#include "kernels/cpu/norm.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace scmoe::cpu {

namespace {
constexpr int kChunk = 16;  // channels per thread when reducing parameter gradients over rows
}

template <class T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* w, const T* b, int N, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const T* x = inp + (int64_t)n * C;
    double m = 0, v = 0;
    for (int c = 0; c < C; c++) m += x[c];
    m /= C;
    for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
    v /= C;
    double s = 1.0 / std::sqrt(v + kNormEps);
    T* o = out + (int64_t)n * C;
    for (int c = 0; c < C; c++) o[c] = T((x[c] - m) * s) * w[c] + b[c];
    mean[n] = T(m);
    rstd[n] = T(s);
  }
}

template <class T>
void layernorm_backward(T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w, const T* mean,
                        const T* rstd, int N, int C, bool accumulate_dinp) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const T* x = inp + (int64_t)n * C;
    const T* d = dout + (int64_t)n * C;
    double m = mean[n], s = rstd[n];
    double dnorm_mean = 0, dnorm_norm_mean = 0;
    for (int c = 0; c < C; c++) {
      double xh = (x[c] - m) * s, dn = double(w[c]) * d[c];
      dnorm_mean += dn;
      dnorm_norm_mean += dn * xh;
    }
    dnorm_mean /= C;
    dnorm_norm_mean /= C;
    T* di = dinp + (int64_t)n * C;
    for (int c = 0; c < C; c++) {
      double xh = (x[c] - m) * s, dn = double(w[c]) * d[c];
      T g = T((dn - dnorm_mean - xh * dnorm_norm_mean) * s);
      di[c] = accumulate_dinp ? di[c] + g : g;
    }
  }
#pragma omp parallel for schedule(static)
  for (int c0 = 0; c0 < C; c0 += kChunk) {
    int c1 = std::min(C, c0 + kChunk);
    for (int n = 0; n < N; n++) {
      const T* x = inp + (int64_t)n * C;
      const T* d = dout + (int64_t)n * C;
      for (int c = c0; c < c1; c++) {
        dw[c] += (x[c] - mean[n]) * rstd[n] * d[c];
        db[c] += d[c];
      }
    }
  }
}

template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* w, int N, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const T* x = inp + (int64_t)n * C;
    double ss = 0;
    for (int c = 0; c < C; c++) ss += double(x[c]) * x[c];
    double s = 1.0 / std::sqrt(ss / C + kNormEps);
    T* o = out + (int64_t)n * C;
    for (int c = 0; c < C; c++) o[c] = T(x[c] * s) * w[c];
    rstd[n] = T(s);
  }
}

template <class T>
void rmsnorm_backward(T* dinp, T* dw, const T* dout, const T* inp, const T* w, const T* rstd, int N,
                      int C, bool accumulate_dinp) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const T* x = inp + (int64_t)n * C;
    const T* d = dout + (int64_t)n * C;
    double s = rstd[n], dot = 0;
    for (int c = 0; c < C; c++) dot += double(w[c]) * d[c] * x[c] * s;
    dot /= C;
    T* di = dinp + (int64_t)n * C;
    for (int c = 0; c < C; c++) {
      double xh = x[c] * s;
      T g = T((double(w[c]) * d[c] - xh * dot) * s);
      di[c] = accumulate_dinp ? di[c] + g : g;
    }
  }
#pragma omp parallel for schedule(static)
  for (int c0 = 0; c0 < C; c0 += kChunk) {
    int c1 = std::min(C, c0 + kChunk);
    for (int n = 0; n < N; n++) {
      const T* x = inp + (int64_t)n * C;
      const T* d = dout + (int64_t)n * C;
      for (int c = c0; c < c1; c++) dw[c] += x[c] * rstd[n] * d[c];
    }
  }
}

#define SCMOE_INSTANTIATE(T)                                                                       \
  template void layernorm_forward<T>(T*, T*, T*, const T*, const T*, const T*, int, int);          \
  template void layernorm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, \
                                      int, int, bool);                                              \
  template void rmsnorm_forward<T>(T*, T*, const T*, const T*, int, int);                          \
  template void rmsnorm_backward<T>(T*, T*, const T*, const T*, const T*, const T*, int, int, bool);
SCMOE_INSTANTIATE(float)
SCMOE_INSTANTIATE(double)

}  // namespace scmoe::cpu
