// CPU reference for causal attention (see attention.h), in the spirit of llm.c's attention_forward.
#include "kernels/cpu/attention.h"

#include <cmath>
#include <cstdint>
#include <vector>

namespace scmoe::cpu {

template <class T>
void attention_forward(T* out, T* att, const T* qkv, int B, int Tn, int C, int H) {
  const int hd = C / H, C3 = 3 * C;
  const T scale = T(1.0 / std::sqrt(double(hd)));
#pragma omp parallel for collapse(3) schedule(static)
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      for (int t = 0; t < Tn; t++) {
        const T* q = qkv + ((int64_t)b * Tn + t) * C3 + h * hd;
        T* a = att + (((int64_t)b * H + h) * Tn + t) * Tn;
        T maxv = -INFINITY;
        for (int t2 = 0; t2 <= t; t2++) {
          const T* k = qkv + ((int64_t)b * Tn + t2) * C3 + C + h * hd;
          T s = 0;
#pragma omp simd reduction(+ : s)
          for (int i = 0; i < hd; i++) s += q[i] * k[i];
          s *= scale;
          a[t2] = s;
          if (s > maxv) maxv = s;
        }
        T sum = 0;
        for (int t2 = 0; t2 <= t; t2++) {
          a[t2] = std::exp(a[t2] - maxv);
          sum += a[t2];
        }
        T inv = T(1) / sum;
        for (int t2 = 0; t2 <= t; t2++) a[t2] *= inv;
        for (int t2 = t + 1; t2 < Tn; t2++) a[t2] = 0;
        T* o = out + ((int64_t)b * Tn + t) * C + h * hd;
        for (int i = 0; i < hd; i++) o[i] = 0;
        for (int t2 = 0; t2 <= t; t2++) {
          const T* v = qkv + ((int64_t)b * Tn + t2) * C3 + 2 * C + h * hd;
#pragma omp simd
          for (int i = 0; i < hd; i++) o[i] += a[t2] * v[i];
        }
      }
}

template <class T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* att, int B, int Tn, int C, int H) {
  const int hd = C / H, C3 = 3 * C;
  const T scale = T(1.0 / std::sqrt(double(hd)));
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      std::vector<T> datt(Tn);
      for (int t = 0; t < Tn; t++) {  // clear this head's slice of dqkv
        T* d = dqkv + ((int64_t)b * Tn + t) * C3 + h * hd;
        for (int i = 0; i < hd; i++) d[i] = d[C + i] = d[2 * C + i] = 0;
      }
      for (int t = 0; t < Tn; t++) {
        const T* a = att + (((int64_t)b * H + h) * Tn + t) * Tn;
        const T* dy = dout + ((int64_t)b * Tn + t) * C + h * hd;
        const T* q = qkv + ((int64_t)b * Tn + t) * C3 + h * hd;
        T* dq = dqkv + ((int64_t)b * Tn + t) * C3 + h * hd;
        T dot = 0;
        for (int t2 = 0; t2 <= t; t2++) {
          const T* v = qkv + ((int64_t)b * Tn + t2) * C3 + 2 * C + h * hd;
          T* dv = dqkv + ((int64_t)b * Tn + t2) * C3 + 2 * C + h * hd;
          T s = 0;
#pragma omp simd reduction(+ : s)
          for (int i = 0; i < hd; i++) {
            s += dy[i] * v[i];
            dv[i] += a[t2] * dy[i];
          }
          datt[t2] = s;
          dot += a[t2] * s;
        }
        for (int t2 = 0; t2 <= t; t2++) {
          T dpre = a[t2] * (datt[t2] - dot) * scale;
          const T* k = qkv + ((int64_t)b * Tn + t2) * C3 + C + h * hd;
          T* dk = dqkv + ((int64_t)b * Tn + t2) * C3 + C + h * hd;
#pragma omp simd
          for (int i = 0; i < hd; i++) {
            dq[i] += dpre * k[i];
            dk[i] += dpre * q[i];
          }
        }
      }
    }
}

template <class T>
void attention_decode(T* out, T* att, const T* q, const T* k, const T* v, int Tk, int C, int H) {
  const int hd = C / H;
  const T scale = T(1.0 / std::sqrt(double(hd)));
  // One position's work is tiny: threads pay off only once the cache is long.
#pragma omp parallel for schedule(static) if ((int64_t)Tk * C >= (1 << 16))
  for (int h = 0; h < H; h++) {
    const T* qh = q + h * hd;
    T* a = att + (int64_t)h * Tk;
    T maxv = -INFINITY;
    for (int t2 = 0; t2 < Tk; t2++) {
      const T* kh = k + (int64_t)t2 * C + h * hd;
      T s = 0;
#pragma omp simd reduction(+ : s)
      for (int i = 0; i < hd; i++) s += qh[i] * kh[i];
      s *= scale;
      a[t2] = s;
      if (s > maxv) maxv = s;
    }
    T sum = 0;
    for (int t2 = 0; t2 < Tk; t2++) {
      a[t2] = std::exp(a[t2] - maxv);
      sum += a[t2];
    }
    T inv = T(1) / sum;
    for (int t2 = 0; t2 < Tk; t2++) a[t2] *= inv;
    T* o = out + h * hd;
    for (int i = 0; i < hd; i++) o[i] = 0;
    for (int t2 = 0; t2 < Tk; t2++) {
      const T* vh = v + (int64_t)t2 * C + h * hd;
#pragma omp simd
      for (int i = 0; i < hd; i++) o[i] += a[t2] * vh[i];
    }
  }
}

template void attention_forward<float>(float*, float*, const float*, int, int, int, int);
template void attention_forward<double>(double*, double*, const double*, int, int, int, int);
template void attention_backward<float>(float*, const float*, const float*, const float*, int, int, int, int);
template void attention_backward<double>(double*, const double*, const double*, const double*, int, int,
                                         int, int);
template void attention_decode<float>(float*, float*, const float*, const float*, const float*, int, int, int);
template void attention_decode<double>(double*, double*, const double*, const double*, const double*, int, int,
                                       int);

}  // namespace scmoe::cpu
