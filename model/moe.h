// A mixture-of-experts layer, split as Megatron-Core splits it: router (gate logits, softmax, top-k,
// losses) -> dispatcher (capacity plan, permute into expert-contiguous rows) -> experts (GELU MLPs on
// their rows) -> combine (un-permute, weight by gates). The dispatcher is the only part that will
// exchange rows between ranks under expert parallelism.
#pragma once
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/layers.h"
#include "train/config.h"

namespace scmoe {

// What a MoE layer observed in its last forward (for logs and metrics).
struct MoeStats {
  double aux = 0, z = 0;
  int64_t dropped = 0, assignments = 0;
  double load_max_over_mean = 0;  // max_e tokens_e / mean_e tokens_e (1 = perfectly balanced)
  std::vector<int64_t> tokens_per_expert;
};

template <class T>
struct MoE {
  int N = 0, C = 0, F = 0, E = 0, k = 1;
  bool renormalize = true, noise = false;
  double capacity_factor = 0, aux_coef = 0, z_coef = 0;
  Linear<T> gate, noise_gate;
  std::vector<MLP<T>> experts;
  MoeStats stats;

  // saved by forward
  T *logits = nullptr, *probs = nullptr, *topk_gate = nullptr, *xe = nullptr, *ye = nullptr;
  T *noise_pre = nullptr, *noise_eps = nullptr, *hidden_h = nullptr, *hidden_g = nullptr;
  int32_t *topk_idx = nullptr, *pos = nullptr;
  std::vector<int64_t> route_counts, counts, offsets;
  std::vector<double> pmean;
  const T* x = nullptr;
  // backward scratch; dx is this layer's gradient w.r.t. its input (read by whoever owns the input)
  T *dlogits = nullptr, *dgate = nullptr, *dye = nullptr, *dxe = nullptr, *dh = nullptr, *dg = nullptr;
  T* dx = nullptr;

  void setup(ParamTable& pt, const std::string& name, const ModelConfig& mc, const MoeConfig& moe, int top_k) {
    C = mc.d_model, F = moe.d_expert > 0 ? moe.d_expert : mc.d_ff, E = moe.num_experts, k = top_k;
    renormalize = moe.renormalize, noise = moe.gate_noise;
    capacity_factor = moe.capacity_factor, aux_coef = moe.aux_loss_coef, z_coef = moe.z_loss_coef;
    double proj_std = mc.init_std / std::sqrt(2.0 * mc.n_layer);
    gate.setup(pt, name + ".gate", C, E, false, mc.init_std);
    if (noise) noise_gate.setup(pt, name + ".noise", C, E, false, mc.init_std);
    experts.resize(E);
    for (int e = 0; e < E; e++)
      experts[e].setup(pt, name + ".experts." + std::to_string(e), C, F, mc.init_std, proj_std);
    route_counts.assign(E, 0), counts.assign(E, 0), offsets.assign(E + 1, 0), pmean.assign(E, 0);
  }
  void bind(T* p, T* g) {
    gate.bind(p, g);
    if (noise) noise_gate.bind(p, g);
    for (auto& ex : experts) ex.bind(p, g);
  }
  void alloc(Arena& a, int N_) {
    N = N_;
    size_t NE = (size_t)N * E, Nk = (size_t)N * k;
    logits = a.alloc<T>(NE), probs = a.alloc<T>(NE), dlogits = a.alloc<T>(NE);
    if (noise) noise_pre = a.alloc<T>(NE), noise_eps = a.alloc<T>(NE);
    topk_idx = a.alloc<int32_t>(Nk), pos = a.alloc<int32_t>(Nk);
    topk_gate = a.alloc<T>(Nk), dgate = a.alloc<T>(Nk);
    xe = a.alloc<T>(Nk * C), ye = a.alloc<T>(Nk * C), dye = a.alloc<T>(Nk * C), dxe = a.alloc<T>(Nk * C);
    hidden_h = a.alloc<T>(Nk * F), hidden_g = a.alloc<T>(Nk * F);
    dh = a.alloc<T>(Nk * F), dg = a.alloc<T>(Nk * F);
    dx = a.alloc<T>((size_t)N * C);
  }

  int64_t capacity() const {
    if (capacity_factor <= 0) return (int64_t)N * k;  // dropless
    return std::min<int64_t>((int64_t)k * (int64_t)std::ceil(capacity_factor * N / E), N);
  }

  // y[N,C] = MoE(x). `rng` draws the gate noise in training (nullptr: no noise, e.g. evaluation).
  void forward(T* y, const T* x_, Rng* rng) {
    x = x_;
    gate.forward(logits, x, N);
    noise_applied = noise && rng;
    if (noise_applied) add_gate_noise(*rng);
    auto L = ops::router_forward(logits, N, E, k, renormalize, probs, topk_idx, topk_gate, pmean.data(),
                                 route_counts.data());
    stats.aux = L.aux, stats.z = L.z;
    stats.dropped = ops::dispatch_plan(topk_idx, N, k, E, capacity(), pos, counts.data(), offsets.data());
    stats.assignments = (int64_t)N * k;
    ops::permute_forward(xe, x, pos, N, k, C);
    for (int e = 0; e < E; e++) {
      bind_expert_buffers(e);
      experts[e].forward(ye + offsets[e] * C, xe + offsets[e] * C, (int)counts[e]);
    }
    ops::combine_forward(y, ye, topk_gate, pos, N, k, C);
    record_load();
  }

  // dy: gradient of the output. loss_scale: d(objective)/d(per-micro-batch loss), i.e. the scale the
  // aux and z losses enter with. Overwrites dx (the gradient w.r.t. the input) and accumulates params.
  void backward(const T* dy, double loss_scale) {
    ops::combine_backward(dye, dgate, dy, ye, topk_gate, pos, N, k, C);
    for (int e = 0; e < E; e++) {
      bind_expert_buffers(e);
      GradScratch<T> s;
      s.dh = dh + offsets[e] * F, s.dg = dg + offsets[e] * F;
      experts[e].backward(dxe + offsets[e] * C, dye + offsets[e] * C, xe + offsets[e] * C, (int)counts[e], s,
                          false);
    }
    ops::permute_backward(dx, dxe, pos, N, k, C, false);
    ops::router_backward(dlogits, dgate, logits, probs, topk_idx, route_counts.data(), N, E, k, renormalize,
                         aux_coef * loss_scale, z_coef * loss_scale);
    gate.backward(dx, dlogits, x, N, true);
    if (noise_applied) {
      // d(noise_pre) = dlogits * eps * softplus'(noise_pre); reuse dlogits in place.
      for (size_t i = 0; i < (size_t)N * E; i++)
        dlogits[i] *= noise_eps[i] / (T(1) + std::exp(-noise_pre[i]));
      noise_gate.backward(dx, dlogits, x, N, true);
    }
  }

 private:
  void bind_expert_buffers(int e) {
    experts[e].h = hidden_h + offsets[e] * F;
    experts[e].g = hidden_g + offsets[e] * F;
  }
  // Noisy top-k gating (Shazeer et al.): logits += N(0,1) * softplus(x . W_noise). Drawn serially from
  // the trainer's RNG, whose state is checkpointed, so resumed runs draw the same noise.
  void add_gate_noise(Rng& r) {
    noise_gate.forward(noise_pre, x, N);
    for (size_t i = 0; i < (size_t)N * E; i++) {
      noise_eps[i] = T(r.normal());
      T z = noise_pre[i];
      T softplus = z > T(20) ? z : std::log1p(std::exp(z));
      logits[i] += noise_eps[i] * softplus;
    }
  }
  bool noise_applied = false;
  void record_load() {
    stats.tokens_per_expert.assign(counts.begin(), counts.end());
    int64_t mx = 0, sum = 0;
    for (auto c : counts) mx = std::max(mx, c), sum += c;
    stats.load_max_over_mean = sum ? double(mx) * E / double(sum) : 0.0;
  }
};

}  // namespace scmoe
