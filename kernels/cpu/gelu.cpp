// CPU reference for GELU (see gelu.h).
#include "kernels/cpu/gelu.h"

#include <cmath>

namespace scmoe::cpu {

namespace {
constexpr double kGeluScale = 0.7978845608028654;  // sqrt(2/pi)

// tanh through exp: libm's tanhf was a third of a training step's time; exp is much cheaper and
// the result is within a few ulps (saturates correctly: exp overflow gives 1, underflow -1).
template <class T>
inline T fast_tanh(T u) {
  return T(1) - T(2) / (std::exp(T(2) * u) + T(1));
}
}  // namespace

template <class T>
void gelu_forward(T* out, const T* inp, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    T x = inp[i];
    out[i] = T(0.5) * x * (T(1) + fast_tanh(T(kGeluScale) * (x + T(0.044715) * x * x * x)));
  }
}

template <class T>
void gelu_backward(T* dinp, const T* inp, const T* dout, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    T x = inp[i];
    T u = T(kGeluScale) * (x + T(0.044715) * x * x * x);
    T th = fast_tanh(u);
    T sech2 = T(1) - th * th;
    T grad = T(0.5) * (T(1) + th) + T(0.5) * x * sech2 * T(kGeluScale) * (T(1) + T(3 * 0.044715) * x * x);
    dinp[i] = grad * dout[i];
  }
}

template void gelu_forward<float>(float*, const float*, int64_t);
template void gelu_forward<double>(double*, const double*, int64_t);
template void gelu_backward<float>(float*, const float*, const float*, int64_t);
template void gelu_backward<double>(double*, const double*, const double*, int64_t);

}  // namespace scmoe::cpu
