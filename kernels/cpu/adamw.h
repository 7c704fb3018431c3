// AdamW over the flat parameter buffer (decoupled weight decay, skipped for norms and biases), and the
// global gradient norm and clip factor; twin of kernels/cuda/adamw.h. Deterministic: reductions are
// over fixed chunks summed in a fixed order, whatever the number of threads.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/config.h"
#include "core/params.h"

namespace scmoe::cpu {

// A tensor's place in the buffer (the ParamTable's entries without their names).
struct ParamRange {
  size_t offset = 0, numel = 0;
  bool decay = true;
  bool expert = false;  // a routed expert's tensor (its gradient norm is summed over ranks)
};
std::vector<ParamRange> param_ranges(const ParamTable& table);

// sqrt(sum of squares) of g[0..n).
template <class T>
double global_norm(const T* g, size_t n);

// out_sq[0] += the squared norm of the replicated tensors' gradients, out_sq[1] += the experts' (each
// tensor's norm squared, summed in table order).
template <class T>
void grad_norm_squared(double* out_sq, const T* grads, const std::vector<ParamRange>& ranges);

// norm = sqrt(sq[0] + ... + sq[n_sq-1]); mult = grad_clip / norm when grad_clip > 0 and norm exceeds it,
// else 1.
void grad_clip_mult(double* out_mult, double* out_norm, const double* sq, int n_sq, double grad_clip);

// One AdamW step (t counts from 1): gradients times grad_mult, moments updated, bias-corrected update
// and decoupled weight decay (on ranges with decay set), arithmetic in double.
template <class T>
void adamw_step(T* params, T* m, T* v, const T* grads, const std::vector<ParamRange>& ranges, const OptimConfig& cfg,
                double lr, int64_t t, double grad_mult);

}  // namespace scmoe::cpu
