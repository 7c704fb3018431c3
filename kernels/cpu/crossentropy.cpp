// CPU reference for fused softmax cross-entropy (see crossentropy.h).
#include "kernels/cpu/crossentropy.h"

#include <cmath>

namespace scmoe::cpu {

template <class T>
double crossentropy_forward_backward(T* logits, T* losses, const int32_t* targets, int N, int V,
                                     T grad_scale, bool want_grad) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    T* l = logits + (int64_t)n * V;
    double maxv = -INFINITY;
    for (int v = 0; v < V; v++) maxv = l[v] > maxv ? double(l[v]) : maxv;
    double sum = 0;
    for (int v = 0; v < V; v++) sum += std::exp(double(l[v]) - maxv);
    double logz = maxv + std::log(sum);
    losses[n] = T(logz - double(l[targets[n]]));
    if (!want_grad) continue;
    for (int v = 0; v < V; v++) l[v] = T(std::exp(double(l[v]) - logz)) * grad_scale;
    l[targets[n]] -= grad_scale;
  }
  double total = 0;  // summed serially so the reported loss is independent of the thread count
  for (int n = 0; n < N; n++) total += losses[n];
  return total / N;
}

template double crossentropy_forward_backward<float>(float*, float*, const int32_t*, int, int, float, bool);
template double crossentropy_forward_backward<double>(double*, double*, const int32_t*, int, int, double,
                                                      bool);

}  // namespace scmoe::cpu
