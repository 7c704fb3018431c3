// Incremental inference (infer/infer.h): the KV-cached path against the full forward recomputing the
// window, for every architecture (float64, 1e-9), across window slides; expert offloading against
// the resident model (bit-identical logits and tokens) for every migration mode, cache size and
// architecture, with its counters; a layer whose gate always picks the same experts.
#include <omp.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/rng.h"
#include "infer/infer.h"
#include "infer/sampler.h"
#include "model/gpt.h"
#include "tests/infer/infer_testing.h"
#include "tests/testing.h"

using namespace scmoe;
using infer_testing::config_of;
using infer_testing::randomise;
using infer_testing::Run;

namespace {

template <class T>
int argmax(const T* v, int n) {
  int b = 0;
  for (int i = 1; i < n; i++)
    if (v[i] > v[b]) b = i;
  return b;
}

// Greedy generation with the KV cache; after every step the full forward over the generator's
// window (padded to seq_len; causal attention and dropless routing make the padding irrelevant)
// must give the same logits at the last position, and the same greedy token.
template <class T = double>
void check_kv_equals_recompute(const char* label, std::vector<std::string> sets, double tol = 1e-9) {
  Config cfg = config_of(sets);
  GPT<Cpu<T>> m(cfg, 1);
  const std::vector<T> params = randomise(m, 11);
  Generator<Cpu<T>> gen(cfg, params.data());
  const int V = cfg.model.vocab_size, Tn = cfg.model.seq_len;
  std::vector<int32_t> window(Tn, 0);
  double worst = 0;
  bool same_tokens = true, windows_ok = true;
  int32_t tok = 5;
  const int steps = 3 * Tn;  // crosses several window slides
  for (int i = 0; i < steps; i++) {
    const T* lg = gen.step(i < 3 ? int32_t(7 * i % V) : tok);
    const auto& ctx = gen.context();
    windows_ok &= !ctx.empty() && int(ctx.size()) <= Tn;
    std::fill(window.begin(), window.end(), 0);
    std::copy(ctx.begin(), ctx.end(), window.begin());
    m.forward(window.data(), nullptr, 0.0);
    const T* ref = m.logits() + (ctx.size() - 1) * V;
    double scale = 1e-300, diff = 0;
    for (int v = 0; v < V; v++)
      scale = std::max(scale, std::fabs(double(ref[v]))),
      diff = std::max(diff, std::fabs(double(ref[v]) - double(lg[v])));
    worst = std::max(worst, diff / scale);
    tok = argmax(lg, V);
    same_tokens &= tok == argmax(ref, V);
  }
  std::printf("%-28s %d steps, %d slides: max relative logit difference %.2e\n", label, steps, gen.slides(),
              worst);
  CHECK(worst <= tol);
  CHECK(same_tokens);
  CHECK(windows_ok);
  CHECK(gen.slides() >= 2);
}

// Samples n tokens (temperature 1, seeded) after a short prompt.
// per_expert: each MoE layer's transfers per expert.
Run generate(const Config& cfg, const std::vector<float>& params, const InferenceConfig& ic, int n, uint64_t seed,
             std::vector<std::vector<int64_t>>* per_expert = nullptr) {
  Generator<Cpu<float>> gen(infer_testing::with_inference(cfg, ic), params.data());
  Run r = infer_testing::sample_run(gen, cfg.model.vocab_size, n, seed);
  if (per_expert)
    for (const auto& [l, s] : r.layers) per_expert->push_back(gen.cache(l)->transfers_per_expert());
  return r;
}

InferenceConfig offload(int slots, const char* migration, double gb_s = 0, double latency_us = 0) {
  InferenceConfig ic;
  ic.offload_experts = true;
  ic.expert_cache_slots = slots;
  ic.migration = migration;
  ic.host_link_gb_s = gb_s;
  ic.host_link_latency_us = latency_us;
  return ic;
}

// Offloading changes where the weights are read from, never the result: tokens and every logit are
// bit-identical to the resident model's. The counters add up.
void check_offload_identical(const char* label, std::vector<std::string> sets,
                             std::vector<InferenceConfig> modes) {
  Config cfg = config_of(sets);
  GPT<Cpu<float>> m(cfg, 1);
  const std::vector<float> params = randomise(m, 5);
  const int n = 40;
  const Run base = generate(cfg, params, InferenceConfig{}, n, 99);
  CHECK(base.stats.transfers == 0 && base.layers.empty());
  for (const InferenceConfig& ic : modes) {
    std::vector<std::vector<int64_t>> per_expert;
    const Run r = generate(cfg, params, ic, n, 99, &per_expert);
    bool same_logits = r.logits.size() == base.logits.size();
    for (size_t i = 0; same_logits && i < r.logits.size(); i++)
      same_logits =
          std::memcmp(r.logits[i].data(), base.logits[i].data(), r.logits[i].size() * sizeof(float)) == 0;
    const OffloadStats& s = r.stats;
    std::printf(
        "%-22s slots %d %-11s: %3lld requests, hit %5.1f%%, %3lld transfers (%lld speculative, %lld used), "
        "memory %.0f%% of resident\n",
        label, ic.expert_cache_slots, ic.migration.c_str(), (long long)s.requests, 100 * s.hit_rate(),
        (long long)s.transfers, (long long)s.spec_transfers, (long long)s.spec_hits,
        100.0 * r.mem.offloaded() / r.mem.resident());
    CHECK(r.tokens == base.tokens);
    CHECK(same_logits);
    // Every miss is one transfer; every transfer moves one expert; every position computed asks for k
    // experts in each MoE layer (the prompt's 3, the n sampled ones and those recomputed by slides).
    const int k = m.top_k();
    CHECK(s.transfers - s.spec_transfers == s.requests - s.hits);
    CHECK(s.spec_hits <= s.spec_transfers && s.hits <= s.requests);
    CHECK(r.positions > 3 + n && s.requests == int64_t(r.layers.size()) * r.positions * k);
    CHECK(r.layers.size() == m.branches().size());
    if (ic.migration != "speculative") CHECK(s.spec_transfers == 0);
    const int64_t expert_bytes = s.transfers ? s.bytes / s.transfers : 0;
    CHECK(s.bytes == s.transfers * expert_bytes);
    CHECK(ic.expert_cache_slots == cfg.moe.num_experts ? r.mem.offloaded() <= r.mem.resident()
                                                       : r.mem.offloaded() < r.mem.resident());
    CHECK(r.mem.expert_cache == r.layers.size() * size_t(ic.expert_cache_slots) * size_t(expert_bytes));
    if (ic.expert_cache_slots == cfg.moe.num_experts) {  // nothing is ever evicted: each expert crosses once
      for (const auto& pe : per_expert)
        for (int64_t t : pe) CHECK(t <= 1);
    }
  }
}

// A MoE layer whose gate is all zeros: every expert ties, so top-k takes experts 0..k-1 for every token.
// With k slots they cross once; the others never do, and every later request hits.
void check_constant_routing_layer() {
  Config cfg = config_of({"model.arch=moe", "moe.top_k=2"});
  GPT<Cpu<float>> m(cfg, 1);
  std::vector<float> params = randomise(m, 3);
  const TensorRef& gate = m.arch().blocks[1].gate.w;
  std::fill(params.begin() + long(gate.offset), params.begin() + long(gate.offset + gate.numel), 0.f);
  std::vector<std::vector<int64_t>> per_expert;
  const int n = 20;
  const Run r = generate(cfg, params, offload(2, "async"), n, 7, &per_expert);
  CHECK(r.layers.size() == 2 && r.layers[0].first == 1 && r.layers[1].first == 3);
  const OffloadStats& s = r.layers[0].second;
  std::printf(
      "constant-routing layer 1: %lld requests, %lld hits, %lld transfers; per expert %lld %lld %lld %lld\n",
      (long long)s.requests, (long long)s.hits, (long long)s.transfers, (long long)per_expert[0][0],
      (long long)per_expert[0][1], (long long)per_expert[0][2], (long long)per_expert[0][3]);
  CHECK(s.transfers == 2);
  CHECK(s.hits == s.requests - 2);
  CHECK(per_expert[0][0] == 1 && per_expert[0][1] == 1 && per_expert[0][2] == 0 && per_expert[0][3] == 0);
  CHECK(r.layers[1].second.requests == s.requests);  // the other layer routes as usual
}

}  // namespace

int main() {
  // One position's ops are tiny: threads only add fork/join costs (and the tests run two at a time).
  omp_set_num_threads(1);
  check_kv_equals_recompute("dense", {"model.arch=dense"});
  check_kv_equals_recompute("dense rmsnorm", {"model.arch=dense", "model.norm=rmsnorm"});
  check_kv_equals_recompute("moe top-2", {"model.arch=moe", "moe.top_k=2"});
  check_kv_equals_recompute("moe top-1 every block", {"model.arch=moe", "moe.top_k=1", "moe.every=1"});
  check_kv_equals_recompute("shared_expert", {"model.arch=shared_expert"});
  for (const char* pos : {"1", "2", "3"})
    for (const char* comb : {"add", "cg1", "cg2"})
      check_kv_equals_recompute(
          (std::string("scmoe pos-") + pos + " " + comb).c_str(),
          {"model.arch=scmoe", std::string("scmoe.position=") + pos, std::string("scmoe.combine=") + comb});
  check_kv_equals_recompute("scmoe-2 rmsnorm", {"model.arch=scmoe", "moe.top_k=2", "model.norm=rmsnorm"});
  check_kv_equals_recompute("scmoe pos-1 every block",
                            {"model.arch=scmoe", "scmoe.position=1", "moe.every=1"});
  check_kv_equals_recompute<float>("scmoe pos-2 cg1 float32", {"model.arch=scmoe"}, 1e-5);

  check_offload_identical("scmoe pos-2", {"model.arch=scmoe"},
                          {offload(1, "async"), offload(1, "blocking"), offload(4, "async"),
                           offload(4, "blocking"), offload(2, "speculative"), offload(1, "async", 2.0, 20)});
  check_offload_identical("scmoe pos-1", {"model.arch=scmoe", "scmoe.position=1"}, {offload(1, "async")});
  check_offload_identical("scmoe pos-3 cg2", {"model.arch=scmoe", "scmoe.position=3", "scmoe.combine=cg2"},
                          {offload(1, "async"), offload(1, "blocking")});
  check_offload_identical("scmoe-2", {"model.arch=scmoe", "moe.top_k=2"},
                          {offload(2, "async"), offload(3, "blocking")});
  check_offload_identical("moe top-2", {"model.arch=moe", "moe.top_k=2"},
                          {offload(2, "blocking"), offload(2, "async"), offload(2, "speculative"),
                           offload(4, "speculative"), offload(3, "speculative", 2.0, 20)});
  check_offload_identical("moe top-1 every block", {"model.arch=moe", "moe.top_k=1", "moe.every=1"},
                          {offload(1, "speculative"), offload(1, "blocking")});
  check_offload_identical("shared_expert", {"model.arch=shared_expert"},
                          {offload(1, "async"), offload(4, "speculative")});
  check_constant_routing_layer();

  // A config error, not a failure deep in generation.
  CHECK_THROWS_WITH(config_of({"model.arch=moe", "moe.top_k=2", "inference.offload_experts=true",
                               "inference.expert_cache_slots=1"}),
                    "inference.expert_cache_slots (1) must be >= moe.top_k (2)");
  CHECK_THROWS_WITH(
      config_of({"model.arch=scmoe", "inference.offload_experts=true", "inference.expert_cache_slots=5"}),
      "must be <= moe.num_experts (4)");
  TEST_MAIN_END();
}
