// CPU reference for the embedding op (see encoder.h).
#include "kernels/cpu/encoder.h"

#include <algorithm>

namespace scmoe::cpu {

template <class T>
void encoder_forward(T* out, const int32_t* idx, const T* wte, const T* wpe, int B, int Tn, int C) {
#pragma omp parallel for schedule(static)
  for (int bt = 0; bt < B * Tn; bt++) {
    const T* te = wte + (int64_t)idx[bt] * C;
    const T* pe = wpe + (int64_t)(bt % Tn) * C;
    T* o = out + (int64_t)bt * C;
    for (int c = 0; c < C; c++) o[c] = te[c] + pe[c];
  }
}

template <class T>
void encoder_backward(T* dwte, T* dwpe, const T* dout, const int32_t* idx, int B, int Tn, int C) {
  constexpr int kChunk = 16;
#pragma omp parallel for schedule(static)
  for (int c0 = 0; c0 < C; c0 += kChunk) {
    int c1 = std::min(C, c0 + kChunk);
    for (int bt = 0; bt < B * Tn; bt++) {
      const T* d = dout + (int64_t)bt * C;
      T* te = dwte + (int64_t)idx[bt] * C;
      T* pe = dwpe + (int64_t)(bt % Tn) * C;
      for (int c = c0; c < c1; c++) {
        te[c] += d[c];
        pe[c] += d[c];
      }
    }
  }
}

template void encoder_forward<float>(float*, const int32_t*, const float*, const float*, int, int, int);
template void encoder_forward<double>(double*, const int32_t*, const double*, const double*, int, int, int);
template void encoder_backward<float>(float*, float*, const float*, const int32_t*, int, int, int);
template void encoder_backward<double>(double*, double*, const double*, const int32_t*, int, int, int);

}  // namespace scmoe::cpu
