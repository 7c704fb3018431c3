// What the generation tests share (tests/infer/test_infer.cpp on the CPU, tests/infer/emu/infer_cuda.cpp
// on the CUDA backend): a small model whose weights make every part matter.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.h"
#include "infer/expert_cache.h"
#include "infer/infer_types.h"
#include "infer/sampler.h"
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

// Random weights, with norms and biases perturbed away from 1 / 0 so that they matter; returns them
// (the ParamTable's layout, on the host: what a generator is built from).
template <class B>
std::vector<typename B::G> randomise(GPT<B>& m, uint64_t seed) {
  using G = typename B::G;
  m.init(seed);
  std::vector<G> p(m.table().total());
  m.get_params(p.data());
  Rng r(seed + 1);
  for (const auto& s : m.table().specs())
    if (!s.decay)
      for (size_t i = 0; i < s.numel; i++) p[s.offset + i] += G(0.2 * r.normal());
  m.set_params(p.data());
  return p;
}

inline Config with_inference(Config cfg, const InferenceConfig& ic) {
  cfg.inference = ic;
  return cfg;
}

// What a generator did: sampled tokens, the logits they were drawn from, its offloading counters.
struct Run {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;
  OffloadStats stats;
  std::vector<std::pair<int, OffloadStats>> layers;
  DeviceMemory mem;
  int64_t positions = 0;
};

// Samples n tokens (temperature 1, seeded) after a short prompt with `gen` (a float generator on either
// backend: step() returns float logits on the host).
template <class Gen>
Run sample_run(Gen& gen, int V, int n, uint64_t seed) {
  Run r;
  const float* lg = nullptr;
  for (int32_t t : {1, 4, 9}) lg = gen.step(t);
  Rng rng(seed);
  SamplingOptions so;
  for (int i = 0; i < n; i++) {
    r.logits.emplace_back(lg, lg + V);
    r.tokens.push_back(sample_token(lg, V, so, rng));
    lg = gen.step(r.tokens.back());
  }
  r.stats = gen.offload_stats();
  r.layers = gen.layer_stats();
  r.mem = gen.device_memory();
  r.positions = gen.positions();
  return r;
}

}  // namespace scmoe::infer_testing
