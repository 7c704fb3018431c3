// Writes one forward/backward of our model as a safetensors dump (parameters, batch, loss, every
// gradient) for tests/torch_ref/compare.py to check against an independent PyTorch implementation.
// usage: ref_dump OUT.safetensors [KEY=VALUE]...   (config overrides; train.dtype picks float32/64)
#include <cstdio>
#include <map>

#include "core/rng.h"
#include "model/gpt.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/safetensors.h"

using namespace scmoe;

template <class T>
static void dump(const Config& cfg, const std::string& out) {
  const int B = cfg.train.batch_size, Tn = cfg.model.seq_len, N = B * Tn;
  GPT<Cpu<T>> model(cfg, B);
  model.init(cfg.train.seed);
  // Norm weights and biases start at 1 and 0; randomise them so their gradients are really tested.
  Rng r(99);
  for (const auto& s : model.table().specs())
    if (!s.decay)
      for (size_t i = 0; i < s.numel; i++) model.params()[s.offset + i] += T(0.1 * r.normal());
  // Expert biases (moe.expert_bias) as a run would have learnt them: large enough to change choices.
  std::vector<std::pair<std::string, std::vector<float>>> biases = model.expert_biases();
  for (auto& [name, b] : biases) {
    for (float& v : b) v = float(0.15 * r.normal());
    model.set_expert_bias(name, b);
  }
  std::vector<int32_t> inputs(N), targets(N);
  for (int i = 0; i < N; i++) {
    inputs[i] = int32_t(r.next_u64() % cfg.model.vocab_size);
    targets[i] = int32_t(r.next_u64() % cfg.model.vocab_size);
  }
  model.zero_grad();
  double loss = model.forward(inputs.data(), targets.data(), 1.0 / N);
  model.backward();
  std::vector<StTensor> t;
  for (const auto& s : model.table().specs()) {
    t.push_back({s.name, st_dtype<T>(), s.shape, model.params() + s.offset, s.numel * sizeof(T)});
    t.push_back({"grad." + s.name, st_dtype<T>(), s.shape, model.grads() + s.offset, s.numel * sizeof(T)});
  }
  for (const auto& [name, b] : biases) t.push_back({name, "F32", {int64_t(b.size())}, b.data(), b.size() * 4});
  t.push_back({"inputs", "I32", {B, Tn}, inputs.data(), inputs.size() * 4});
  t.push_back({"targets", "I32", {B, Tn}, targets.data(), targets.size() * 4});
  t.push_back({"loss", "F64", {1}, &loss, sizeof loss});
  double aux = model.aux_loss();
  t.push_back({"aux_loss", "F64", {1}, &aux, sizeof aux});
  const auto& m = cfg.model;
  std::map<std::string, std::string> md = {
      {"n_layer", std::to_string(m.n_layer)}, {"d_model", std::to_string(m.d_model)},
      {"n_head", std::to_string(m.n_head)},   {"d_ff", std::to_string(m.d_ff)},
      {"seq_len", std::to_string(m.seq_len)}, {"vocab_size", std::to_string(m.vocab_size)},
      {"norm", m.norm},                       {"dtype", cfg.train.dtype},
      {"arch", m.arch}};
  if (m.arch != "dense") {
    const auto& mo = cfg.moe;
    auto num = [](double v) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.17g", v);
      return std::string(buf);
    };
    md.insert({{"num_experts", std::to_string(mo.num_experts)}, {"top_k", std::to_string(model.top_k())},
               {"every", std::to_string(mo.every)}, {"capacity_factor", num(mo.capacity_factor)},
               {"aux_loss_coef", num(mo.aux_loss_coef)}, {"z_loss_coef", num(mo.z_loss_coef)},
               {"renormalize", mo.renormalize ? "1" : "0"}, {"position", std::to_string(cfg.scmoe.position)},
               {"combine", cfg.scmoe.combine}, {"gate_noise", "0"}, {"score", mo.score},
               {"seq_aux_loss_coef", num(mo.seq_aux_loss_coef)},
               {"expert_bias", mo.expert_bias.enabled ? "1" : "0"}});
  }
  for (const auto& [l, st] : model.moe_stats())
    std::printf("  MoE layer %d: %lld of %lld assignments dropped\n", l, (long long)st.dropped,
                (long long)st.assignments);
  safetensors_write(out, t, md);
  std::printf("wrote %s: %s %s loss %.6f\n", out.c_str(), m.arch.c_str(), cfg.train.dtype.c_str(), loss);
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: ref_dump OUT.safetensors [KEY=VALUE]...\n");
    return 2;
  }
  try {
    std::vector<std::string> sets = {"model.n_layer=2", "model.d_model=16", "model.n_head=2", "model.d_ff=24",
                                     "model.seq_len=7", "model.vocab_size=13", "train.batch_size=3",
                                     "model.init_std=0.3"};
    for (int i = 2; i < argc; i++) sets.push_back(argv[i]);
    Config cfg = load_config("", sets);
    if (cfg.train.dtype == "float64") dump<double>(cfg, argv[1]);
    else dump<float>(cfg, argv[1]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
