// Small elementwise helpers used by the residual stream: out = a + b, y += x, y = 0.
#pragma once
#include <cstdint>

namespace scmoe::cpu {

template <class T>
void add(T* out, const T* a, const T* b, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

template <class T>
void add_inplace(T* y, const T* x, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

template <class T>
void copy(T* y, const T* x, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) y[i] = x[i];
}

template <class T>
void fill(T* y, T v, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) y[i] = v;
}

}  // namespace scmoe::cpu
