// Picking the next token from logits: temperature (0: greedy), top-k and top-p (nucleus) filtering,
// one seeded uniform draw per token, so a seed gives the same tokens on every platform.
#pragma once
#include <cstdint>

#include "core/rng.h"

namespace scmoe {

struct SamplingOptions {
  double temperature = 1.0;  // 0: argmax (ties to the lower id), no draw
  int top_k = 0;             // keep the k most likely tokens; 0: all
  double top_p = 1.0;        // keep the smallest set of most likely tokens holding >= p of the mass; 1: all
};

// Throws scmoe::Error for a negative temperature or top_k, or top_p outside (0, 1].
void check_sampling(const SamplingOptions& o);

template <class T>
int32_t sample_token(const T* logits, int V, const SamplingOptions& o, Rng& rng);

}  // namespace scmoe
