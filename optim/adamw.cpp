// AdamW and the global gradient norm (see adamw.h).
#include "optim/adamw.h"

#include <algorithm>
#include <cmath>

namespace scmoe {

template <class T>
double global_norm(const T* g, size_t n) {
  constexpr size_t kChunk = 1 << 14;
  size_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(chunks, 0.0);
#pragma omp parallel for schedule(static)
  for (size_t c = 0; c < chunks; c++) {
    double s = 0;
    for (size_t i = c * kChunk, e = std::min(n, (c + 1) * kChunk); i < e; i++) s += double(g[i]) * g[i];
    part[c] = s;
  }
  double total = 0;
  for (double p : part) total += p;
  return std::sqrt(total);
}

template <class T>
AdamW<T>::AdamW(const OptimConfig& cfg, const ParamTable& table)
    : cfg_(cfg), table_(table), m_(table.total(), T(0)), v_(table.total(), T(0)) {}

template <class T>
void AdamW<T>::step(T* params, const T* grads, double lr, double grad_mult) {
  t_++;
  const double b1 = cfg_.beta1, b2 = cfg_.beta2;
  const double bc1 = 1.0 - std::pow(b1, double(t_)), bc2 = 1.0 - std::pow(b2, double(t_));
  for (const auto& s : table_.specs()) {
    const double wd = s.decay ? cfg_.weight_decay : 0.0;
    T* p = params + s.offset;
    const T* g = grads + s.offset;
    T* m = m_.data() + s.offset;
    T* v = v_.data() + s.offset;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < s.numel; i++) {
      double gi = double(g[i]) * grad_mult;
      double mi = b1 * m[i] + (1.0 - b1) * gi;
      double vi = b2 * v[i] + (1.0 - b2) * gi * gi;
      m[i] = T(mi);
      v[i] = T(vi);
      double update = (mi / bc1) / (std::sqrt(vi / bc2) + cfg_.eps);
      p[i] = T(double(p[i]) - lr * (update + wd * double(p[i])));
    }
  }
}

template double global_norm<float>(const float*, size_t);
template double global_norm<double>(const double*, size_t);
template class AdamW<float>;
template class AdamW<double>;

}  // namespace scmoe
