// Learning-rate schedule: linear warm-up from 0, then cosine or linear decay to min_lr over
// decay_steps (optim.decay_steps, or train.max_steps when 0), then flat at min_lr; or constant.
#pragma once
#include <algorithm>
#include <cmath>

#include "core/config.h"

namespace scmoe {

// `step` counts from 0 (the first optimizer step).
inline double lr_at(const OptimConfig& o, int max_steps, long step) {
  if (o.warmup_steps > 0 && step < o.warmup_steps) return o.lr * double(step + 1) / o.warmup_steps;
  if (o.schedule == "constant") return o.lr;
  long horizon = o.decay_steps > 0 ? o.decay_steps : max_steps;
  double span = double(std::max<long>(1, horizon - o.warmup_steps));
  double frac = std::clamp(double(step - o.warmup_steps) / span, 0.0, 1.0);
  double shape = o.schedule == "cosine" ? 0.5 * (1.0 + std::cos(M_PI * frac)) : 1.0 - frac;
  return o.min_lr + (o.lr - o.min_lr) * shape;
}

}  // namespace scmoe
