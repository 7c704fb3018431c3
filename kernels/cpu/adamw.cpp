// AdamW, gradient norm and clip factor (see adamw.h).
#include "kernels/cpu/adamw.h"

#include <algorithm>
#include <cmath>

namespace scmoe::cpu {

std::vector<ParamRange> param_ranges(const ParamTable& table) {
  std::vector<ParamRange> r;
  for (const auto& s : table.specs()) r.push_back({s.offset, s.numel, s.decay, s.expert});
  return r;
}

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
void grad_norm_squared(double* out_sq, const T* grads, const std::vector<ParamRange>& ranges) {
  for (const ParamRange& r : ranges) {
    const double n = global_norm(grads + r.offset, r.numel);
    out_sq[r.expert ? 1 : 0] += n * n;
  }
}

void grad_clip_mult(double* out_mult, double* out_norm, const double* sq, int n_sq, double grad_clip) {
  double s = 0;
  for (int i = 0; i < n_sq; i++) s += sq[i];
  const double norm = std::sqrt(s);
  if (out_norm) *out_norm = norm;
  *out_mult = grad_clip > 0 && norm > grad_clip ? grad_clip / norm : 1.0;
}

template <class T>
void adamw_step(T* params, T* m_buf, T* v_buf, const T* grads, const std::vector<ParamRange>& ranges,
                const OptimConfig& cfg, double lr, int64_t t, double grad_mult) {
  const double b1 = cfg.beta1, b2 = cfg.beta2;
  const double bc1 = 1.0 - std::pow(b1, double(t)), bc2 = 1.0 - std::pow(b2, double(t));
  for (const ParamRange& r : ranges) {
    const double wd = r.decay ? cfg.weight_decay : 0.0;
    T* p = params + r.offset;
    const T* g = grads + r.offset;
    T* m = m_buf + r.offset;
    T* v = v_buf + r.offset;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < r.numel; i++) {
      double gi = double(g[i]) * grad_mult;
      double mi = b1 * m[i] + (1.0 - b1) * gi;
      double vi = b2 * v[i] + (1.0 - b2) * gi * gi;
      m[i] = T(mi);
      v[i] = T(vi);
      double update = (mi / bc1) / (std::sqrt(vi / bc2) + cfg.eps);
      p[i] = T(double(p[i]) - lr * (update + wd * double(p[i])));
    }
  }
}

template double global_norm<float>(const float*, size_t);
template double global_norm<double>(const double*, size_t);
template void grad_norm_squared<float>(double*, const float*, const std::vector<ParamRange>&);
template void grad_norm_squared<double>(double*, const double*, const std::vector<ParamRange>&);
template void adamw_step<float>(float*, float*, float*, const float*, const std::vector<ParamRange>&,
                                const OptimConfig&, double, int64_t, double);
template void adamw_step<double>(double*, double*, double*, const double*, const std::vector<ParamRange>&,
                                 const OptimConfig&, double, int64_t, double);

}  // namespace scmoe::cpu
