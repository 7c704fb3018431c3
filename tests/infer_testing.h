// What the generation tests share (tests/test_infer.cpp on the CPU, tests/emu/infer_cuda.cpp on the
// CUDA backend): a small model whose weights make every part matter.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/gpt.h"
#include "train/config.h"

namespace scmoe::infer_testing {

// 4 blocks, 4 experts, a 12-token window (generation crosses several slides), dropless.
inline Config config_of(std::vector<std::string> sets) {
  std::vector<std::string> all = {"model.n_layer=4",    "model.d_model=16",  "model.n_head=2",
                                  "model.d_ff=24",      "model.seq_len=12",  "model.vocab_size=23",
                                  "model.init_std=0.4", "moe.num_experts=4", "moe.capacity_factor=0",
                                  "train.batch_size=1"};
  all.insert(all.end(), sets.begin(), sets.end());
  return load_config("", all);
}

// Random weights, with norms and biases perturbed away from 1 / 0 so that they matter.
template <class T>
void randomise(GPT<T>& m, uint64_t seed) {
  m.init(seed);
  Rng r(seed + 1);
  for (const auto& s : m.table().specs())
    if (!s.decay)
      for (size_t i = 0; i < s.numel; i++) m.params()[s.offset + i] += T(0.2 * r.normal());
}

}  // namespace scmoe::infer_testing
