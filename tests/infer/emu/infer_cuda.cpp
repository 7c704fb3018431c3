// Generation on the CUDA backend (Generator<cuda::Cuda<T>>) against the CPU backend's
// (Generator<Cpu<float>>), the same generator code (infer/infer.h) on the two kernel sets, on the same
// weights: every architecture, greedy decoding across window slides, the logits of every step
// (fp32: within 1e-4 of the largest logit, and the same greedy tokens; bf16: within 6% — bf16 keeps 8
// mantissa bits and the error grows through 4 blocks). Expert offloading on the device against the
// resident device model: bit-identical logits and sampled tokens for 1 slot / k slots / all slots and
// every migration mode, with consistent counters and the device memory it saves.
// Emulated in CI (every kernel under the SIMT emulation on its stream's thread, the copy stream a thread
// too); natively with a GPU (cudaMemcpyAsync on a copy stream, events, pinned host memory).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/rng.h"
#include "infer/cuda_infer.h"
#include "infer/sampler.h"
#include "tests/infer/infer_testing.h"
#include "tests/kernels/emu/kernel_test.h"

using namespace scmoe;
using infer_testing::config_of;
using infer_testing::randomise;
using infer_testing::Run;

namespace {

int argmax(const float* v, int n) {
  return int(std::max_element(v, v + n) - v);
}

// Greedy decoding driven by the device's logits; the CPU generator is fed the same tokens. Returns the
// worst logit difference relative to the step's largest CPU logit; counts greedy tokens that differ.
template <class T>
double compare_with_cpu(const char* label, const std::vector<std::string>& sets, int* token_mismatches) {
  Config cfg = config_of(sets);
  GPT<Cpu<float>> m(cfg, 1);
  const std::vector<float> params = randomise(m, 11);
  Generator<Cpu<float>> cpu(cfg, params.data());
  Generator<cuda::Cuda<T>> gpu(cfg, params.data());
  const int V = cfg.model.vocab_size, steps = 2 * cfg.model.seq_len;  // 2 window slides
  double worst = 0;
  int32_t tok = 5;
  *token_mismatches = 0;
  for (int i = 0; i < steps; i++) {
    const int32_t in = i < 3 ? int32_t(7 * i % V) : tok;
    const float* ref = cpu.step(in);
    const float* got = gpu.step(in);
    double scale = 1e-30, diff = 0;
    for (int v = 0; v < V; v++)
      scale = std::max(scale, double(std::fabs(ref[v]))), diff = std::max(diff, double(std::fabs(ref[v] - got[v])));
    worst = std::max(worst, diff / scale);
    tok = argmax(got, V);
    *token_mismatches += tok != argmax(ref, V);
  }
  std::printf("  %-34s %s: %d steps, %d slides, max logit difference %.2e of the largest, %d greedy mismatches\n",
              label, std::is_same<T, float>::value ? "fp32" : "bf16", steps, gpu.slides(), worst, *token_mismatches);
  CHECK(gpu.slides() == cpu.slides() && gpu.slides() >= 2);
  CHECK(gpu.context() == cpu.context());
  return worst;
}

// Samples n tokens (temperature 1, seeded) after a short prompt on the device.
template <class T>
Run generate(const Config& cfg, const std::vector<float>& params, int n, uint64_t seed) {
  Generator<cuda::Cuda<T>> gen(cfg, params.data());
  return infer_testing::sample_run(gen, cfg.model.vocab_size, n, seed);
}

Config with_offload(Config cfg, int slots, const char* migration) {
  cfg.inference.offload_experts = true;
  cfg.inference.expert_cache_slots = slots;
  cfg.inference.migration = migration;
  return cfg;
}

// Offloading changes where the expert weights are read from, never the result.
using Modes = std::vector<std::pair<int, const char*>>;  // (slots, migration); slots 0: all

// Offloading in each mode against all experts resident, in storage type T.
template <class T>
void check_offload_identical(const char* label, const std::vector<std::string>& sets, int k, const Modes& modes) {
  Config cfg = config_of(sets);
  GPT<Cpu<float>> m(cfg, 1);
  const std::vector<float> params = randomise(m, 5);
  const int n = 14, E = cfg.moe.num_experts;
  const Run base = generate<T>(cfg, params, n, 99);
  CHECK(base.stats.transfers == 0 && base.layers.empty());
  for (auto [slots, mig] : modes) {
      if (slots == 0) slots = E;
      const Run r = generate<T>(with_offload(cfg, slots, mig), params, n, 99);
      bool same = r.logits.size() == base.logits.size();
      for (size_t i = 0; same && i < r.logits.size(); i++)
        same = std::memcmp(r.logits[i].data(), base.logits[i].data(), r.logits[i].size() * sizeof(float)) == 0;
      const OffloadStats& s = r.stats;
      std::printf("  %-22s %s slots %d %-11s: %3lld requests, hit %5.1f%%, %3lld transfers (%lld speculative), "
                  "device memory %.0f%% of resident\n",
                  label, kt::type_name<T>(), slots, mig, (long long)s.requests, 100 * s.hit_rate(), (long long)s.transfers,
                  (long long)s.spec_transfers, 100.0 * r.mem.offloaded() / r.mem.resident());
      CHECK(same);
      CHECK(r.tokens == base.tokens);
      CHECK(s.transfers - s.spec_transfers == s.requests - s.hits);
      const int64_t layers = int64_t(r.layers.size());
      CHECK(s.requests == layers * r.positions * k);
      CHECK(s.transfers > 0 && s.bytes % s.transfers == 0);
      if (std::string(mig) != "speculative") CHECK(s.spec_transfers == 0);
      if (slots == E) CHECK(s.transfers - s.spec_transfers <= layers * E);  // nothing evicted
      CHECK(slots == E ? r.mem.offloaded() <= r.mem.resident() : r.mem.offloaded() < r.mem.resident());
      CHECK(r.mem.expert_cache == size_t(layers) * size_t(slots) * size_t(s.bytes / s.transfers));
  }
}

}  // namespace

int main() {
  kt::require_device();
  std::printf("CUDA generation vs the CPU generator (%s)\n", kt::mode());
  struct Arch {
    const char* label;
    std::vector<std::string> sets;
  };
  const std::vector<Arch> archs = {
      {"dense", {"model.arch=dense"}},
      {"dense rmsnorm", {"model.arch=dense", "model.norm=rmsnorm"}},
      {"moe top-2", {"model.arch=moe", "moe.top_k=2"}},
      {"moe top-1 every block", {"model.arch=moe", "moe.top_k=1", "moe.every=1"}},
      {"shared_expert", {"model.arch=shared_expert"}},
      {"scmoe pos-1 add", {"model.arch=scmoe", "scmoe.position=1", "scmoe.combine=add"}},
      {"scmoe pos-2 cg1", {"model.arch=scmoe", "scmoe.position=2", "scmoe.combine=cg1"}},
      {"scmoe pos-3 cg2", {"model.arch=scmoe", "scmoe.position=3", "scmoe.combine=cg2"}},
      {"scmoe pos-1 every block", {"model.arch=scmoe", "scmoe.position=1", "moe.every=1"}},
      {"scmoe-2 rmsnorm", {"model.arch=scmoe", "moe.top_k=2", "model.norm=rmsnorm"}},
  };
  for (const Arch& a : archs) {
    int mismatches = 0;
    CHECK(compare_with_cpu<float>(a.label, a.sets, &mismatches) <= 1e-4);
    CHECK(mismatches == 0);
  }
  for (const Arch& a : {archs[0], archs[2], archs[6], archs[7]}) {
    int mismatches = 0;
    CHECK(compare_with_cpu<kt::bf16>(a.label, a.sets, &mismatches) <= 0.06);
  }
  std::printf("expert offloading on the device vs all experts resident\n");
  check_offload_identical<float>("scmoe pos-2", {"model.arch=scmoe"}, 1,
                                 {{1, "blocking"}, {1, "async"}, {1, "speculative"}, {0, "async"}});
  check_offload_identical<float>("moe top-2", {"model.arch=moe", "moe.top_k=2"}, 2,
                                 {{2, "blocking"}, {2, "async"}, {2, "speculative"}, {0, "async"}});
  // bf16 storage: 2-byte expert slots, the same bits as resident.
  check_offload_identical<kt::bf16>("scmoe pos-2", {"model.arch=scmoe"}, 1, {{1, "async"}, {0, "blocking"}});
  // Errors name the key and the range.
  {
    Config cfg = with_offload(config_of({"model.arch=moe", "moe.top_k=2"}), 1, "async");
    GPT<Cpu<float>> m(cfg, 1);
    CHECK_THROWS_WITH(Generator<cuda::Cuda<float>>(cfg, m.params()),
                      "inference.expert_cache_slots (1) must be between moe.top_k (2)");
  }
  TEST_MAIN_END();
}
