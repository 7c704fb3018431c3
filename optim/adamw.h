// AdamW over the flat parameter buffer (decoupled weight decay, skipped for norms and biases), and the
// global gradient norm used for clipping. Both are deterministic: reductions are over fixed chunks
// summed in a fixed order, whatever the number of threads.
#pragma once
#include <cstdint>
#include <vector>

#include "model/params.h"
#include "train/config.h"

namespace scmoe {

// sqrt(sum of squares) of g[0..n).
template <class T>
double global_norm(const T* g, size_t n);

template <class T>
class AdamW {
 public:
  AdamW(const OptimConfig& cfg, const ParamTable& table);
  // One update with learning rate `lr`; gradients are first multiplied by `grad_mult` (clipping).
  void step(T* params, const T* grads, double lr, double grad_mult);
  std::vector<T>& m() { return m_; }
  std::vector<T>& v() { return v_; }
  int64_t t() const { return t_; }
  void set_t(int64_t t) { t_ = t; }

 private:
  OptimConfig cfg_;
  const ParamTable& table_;
  std::vector<T> m_, v_;
  int64_t t_ = 0;
};

extern template class AdamW<float>;
extern template class AdamW<double>;

}  // namespace scmoe
