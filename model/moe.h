// A mixture-of-experts layer, split as Megatron-Core splits it: router (gate logits, scores, top-k,
// losses; RouterSpec) -> dispatcher (rows to the experts' ranks, capacity) -> experts (GELU MLPs on
// their rows, one grouped product) -> combine (rows back, weighted by the gates). Only the dispatcher knows about
// other ranks; the router's statistics (aux / z losses) are reduced over ranks so every loss and
// gradient equals the single-process one on the same global batch. Written once for both backends.
#pragma once
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/rng.h"
#include "model/dispatcher.h"
#include "model/layers.h"

namespace scmoe {

// What a MoE layer observed in its last forward (for logs and metrics). tokens_per_expert counts are
// this rank's share (its experts); aux, z, seq and routed are global.
struct MoeStats {
  double aux = 0, z = 0, seq = 0;
  int64_t dropped = 0, assignments = 0;
  std::vector<int64_t> tokens_per_expert;  // [E] admitted rows; zeros for experts on other ranks
  std::vector<int64_t> routed;             // [E] assignments over the global batch, before capacity
  float bias_min = 0, bias_max = 0;        // the expert bias's range (moe.expert_bias; 0 without)
};

// Gate noise for one MoE layer (Shazeer et al.'s noisy top-k): eps ~ N(0,1) per (token, expert) from a
// stream keyed by (a step draw, the layer, the global token index), so a token's noise is the same
// whichever rank holds it; `rng` (the trainer's, checkpointed) advances once per layer and forward.
template <class S>
void draw_gate_noise(Rng& rng, int layer, int64_t first_token, int N, int E, S* eps) {
  const uint64_t base = rng.next_u64() ^ (0x9E3779B97F4A7C15ull * (uint64_t)(layer + 1));
  for (int n = 0; n < N; n++) {
    Rng tr(base + 0xD1B54A32D192ED03ull * (uint64_t)(first_token + n));
    for (int e = 0; e < E; e++) eps[(size_t)n * E + e] = S(tr.normal());
  }
}

template <class B>
struct MoE {
  using T = typename B::T;
  using S = typename B::S;
  using Acc = typename B::Acc;
  B* k = nullptr;
  int N = 0, C = 0, F = 0, E = 0, kc = 1, W = 1, El = 0, first_expert = 0, layer = 0;
  bool noise = false, force_balanced = false;
  Rng balance_rng;
  RouterSpec spec;  // scores, top-k, renormalisation, the expert bias, sequence statistics
  double capacity_factor = 0, aux_coef = 0, z_coef = 0, seq_coef = 0;
  ExpertBiasConfig bias_cfg;
  int pipeline_degree = 1;
  Communicator* comm = nullptr;
  Linear<B> gate, noise_gate;
  ExpertMLPs<B> experts;  // this rank's experts: global ids first_expert .. first_expert+El-1
  Dispatcher<B> dispatcher;

  // saved by forward
  T *logits = nullptr, *xe = nullptr, *ye = nullptr, *noise_pre = nullptr, *hidden_h = nullptr, *hidden_g = nullptr;
  S *probs = nullptr, *topk_gate = nullptr, *noise_eps = nullptr;
  int32_t* topk_idx = nullptr;
  int64_t* route_counts = nullptr;  // assignments per expert before capacity (global after the reduce)
  int32_t* seq_counts = nullptr;    // [N / seq_len, E] assignments per sequence (sequence-level loss)
  Acc *pmean = nullptr, *losses = nullptr;  // losses: {aux, z, seq} (global after the reduce)
  const T* x = nullptr;
  int64_t N_global = 0;
  // backward scratch; dx is this layer's gradient w.r.t. its input (read by whoever owns the input)
  T *dlogits = nullptr, *dye = nullptr, *dxe = nullptr, *dh = nullptr, *dg = nullptr;
  S* dgate = nullptr;
  T* dx = nullptr;

  void setup(B& kernels, const BlockArch& ba, const Config& cfg, int top_k, int layer_index, Communicator* c) {
    k = &kernels;
    const MoeConfig& moe = cfg.moe;
    C = ba.gate.in, F = ba.experts.first.fc.out, E = ba.gate.out, kc = top_k;
    layer = layer_index, comm = c;
    W = c ? c->world_size() : 1;
    El = ba.experts.count, first_expert = ba.experts.first_expert;
    noise = moe.gate_noise, force_balanced = moe.force_balanced_routing;
    spec.E = E, spec.k = kc, spec.renormalize = moe.renormalize, spec.sigmoid = moe.score == "sigmoid";
    seq_coef = moe.seq_aux_loss_coef;
    spec.seq_len = seq_coef > 0 ? cfg.model.seq_len : 0;
    bias_cfg = moe.expert_bias;
    if (bias_cfg.enabled) {  // state, not an activation: lives with the weights (also for generation)
      bias_ = typename B::template Array<float>(size_t(E), "the expert bias");
      load_ = typename B::template Array<int64_t>(size_t(E), "the expert loads of a step");
      spec.bias = bias_.get();
    }
    balance_rng = Rng(hash_string("balanced-routing", (uint64_t)layer_index * 1000003u + (c ? c->rank() : 0)));
    capacity_factor = moe.capacity_factor, aux_coef = moe.aux_loss_coef, z_coef = moe.z_loss_coef;
    pipeline_degree = moe.pipeline_degree;
    SCMOE_CHECK(pipeline_degree == 1 || capacity_factor > 0,
                "moe.pipeline_degree " << pipeline_degree << " needs fixed-size exchanges: set moe.capacity_factor > 0 "
                                       "(dropless exchanges are sized by the data)");
    dispatcher.setup(kernels, E, kc, C, c, layer_index);
  }
  void bind(const BlockArch& ba, const ParamViews<B>& v) {
    gate.bind(*k, ba.gate, v);
    if (noise) noise_gate.bind(*k, ba.noise, v);
    experts.bind(*k, ba.experts, v);
  }
  void alloc(Arena& a, int N_) {
    N = N_;
    N_global = (int64_t)N * W;
    const size_t NE = (size_t)N * E, Nk = (size_t)N * kc;
    logits = a.alloc<T>(NE), probs = a.alloc<S>(NE), dlogits = a.alloc<T>(NE);
    if (noise) noise_pre = a.alloc<T>(NE), noise_eps = a.alloc<S>(NE);
    topk_idx = a.alloc<int32_t>(Nk);
    topk_gate = a.alloc<S>(Nk), dgate = a.alloc<S>(Nk);
    route_counts = a.alloc<int64_t>(E), pmean = a.alloc<Acc>(E), losses = a.alloc<Acc>(3);
    if (spec.seq_len > 0) seq_counts = a.alloc<int32_t>(size_t(spec.sequences(N)) * E);
    dx = a.alloc<T>((size_t)N * C);
    // With a capacity factor a backend that reads no counts (a device) exchanges fixed-size slots and
    // admits on the device; chunked pipelining needs those slots on any backend. Otherwise only the
    // rows that exist travel (the packed layout: 4x fewer at capacity_factor 2 on 2 ranks).
    const bool fixed = capacity_factor > 0 && (pipeline_degree > 1 || !B::kHostMemory);
    dispatcher.alloc(a, N, capacity(), fixed, pipeline_degree);
    const size_t rows = dispatcher.expert_buffer_rows();
    xe = a.alloc<T>(rows * C), ye = a.alloc<T>(rows * C), dye = a.alloc<T>(rows * C), dxe = a.alloc<T>(rows * C);
    hidden_h = a.alloc<T>(rows * F), hidden_g = a.alloc<T>(rows * F);
    dh = a.alloc<T>(rows * F), dg = a.alloc<T>(rows * F);
    host_eps_.resize(noise ? NE : 0);
    host_logits_.resize(force_balanced ? NE : 0);
  }

  // Rows per expert over the global batch (docs/design.md section 3); dropless when capacity_factor <= 0.
  int64_t capacity() const {
    if (capacity_factor <= 0) return N_global * kc;
    return std::min<int64_t>((int64_t)kc * (int64_t)std::ceil(capacity_factor * N_global / E), N_global);
  }

  // y[N,C] = MoE(x) in phases, so the model can compute between them while rows travel:
  //   begin:   gate, router, plan; rows posted to the experts' ranks ("gate and encode")
  //   post:    (a device without fixed sizes) reads the counts and posts the rows, once the backbone
  //            work that overlaps the dispatch is queued
  //   compute: rows received, experts run, outputs posted back (the expert slot)
  //   finish:  outputs received and combined with the gates into y ("decode")
  // `rng` draws the gate noise in training (nullptr: no noise, e.g. evaluation).
  void forward_begin(const T* x_, Rng* rng) {
    x = x_;
    count_loads_ = rng != nullptr && bias_cfg.enabled;  // training forwards steer the bias, evaluation not
    gate.forward(logits, x, N);
    noise_applied = noise && rng;
    if (noise_applied) {  // logits += eps * softplus(x . W_noise)
      noise_gate.forward(noise_pre, x, N);
      draw_gate_noise(*rng, layer, (int64_t)(comm ? comm->rank() : 0) * N, N, E, host_eps_.data());
      k->upload(noise_eps, host_eps_.data(), host_eps_.size());
      k->gate_noise_forward(logits, noise_pre, noise_eps, (int64_t)N * E);
    }
    if (force_balanced) draw_balanced_logits();
    k->router_forward(logits, N, spec, probs, topk_idx, topk_gate, pmean, route_counts, seq_counts, losses);
    if (W > 1) k->router_stats_pack(dispatcher.stats_buf, route_counts, pmean, losses, N, spec.sequences(N), E);
    dispatcher.dispatch_begin(x, topk_idx);
  }
  void forward_post() { dispatcher.dispatch_post(); }
  // Chunk by chunk (moe.pipeline_degree): chunk c's experts run while later chunks are still arriving.
  void forward_compute() {
    for (int c = 0; c < dispatcher.P; c++) {
      const int64_t r = dispatcher.first_row(c);
      dispatcher.dispatch_finish(c, xe);
      experts.forward(ye + r * C, xe + r * C, hidden_h + r * F, hidden_g + r * F, dispatcher.expert_rows(c));
      dispatcher.combine_begin(c, ye);
    }
  }
  void forward_finish(T* y) {
    dispatcher.combine_finish(y, topk_gate);
    // The global counts and losses arrived on the side stream before the combine.
    if (W > 1)
      k->router_stats_unpack(route_counts, losses, dispatcher.stats_buf, N_global, spec.sequences(int(N_global)), kc, E);
    if (count_loads_) k->add_counts(load_.get(), route_counts, E);  // the step's global loads
  }

  // Backward in the mirrored phases. dy: gradient of the output. loss_scale: d(objective)/d(this
  // rank's per-micro-batch loss share), i.e. grad_scale * N. finish overwrites dx (the gradient
  // w.r.t. the input); parameter gradients are accumulated.
  void backward_begin(const T* dy) { dispatcher.combine_backward_begin(dgate, dy, topk_gate); }
  void backward_compute() {
    for (int c = 0; c < dispatcher.P; c++) {
      const int64_t r = dispatcher.first_row(c);
      dispatcher.combine_backward_finish(c, dye);
      experts.backward(dxe + r * C, dye + r * C, xe + r * C, hidden_h + r * F, hidden_g + r * F, dh + r * F,
                       dg + r * F, dispatcher.expert_rows(c));
      dispatcher.dispatch_backward_begin(c, dxe);
    }
  }
  void backward_finish(double loss_scale) {
    dispatcher.dispatch_backward_finish(dx);
    // The kernel normalises by the local N; the losses are means over N_global tokens with global
    // counts, hence the extra N / N_global factor on aux (1 in a single process).
    const double f = double(N) / double(N_global);
    // z and seq are means over tokens / sequences of which this rank holds its share: loss_scale alone.
    const RouterGradScales sc{aux_coef * loss_scale * f, z_coef * loss_scale, seq_coef * loss_scale};
    k->router_backward(dlogits, dgate, logits, probs, topk_idx, route_counts, seq_counts, N, spec, sc);
    if (force_balanced) k->zero(dlogits, (size_t)N * E);  // the drawn logits are constants
    gate.backward(dx, dlogits, x, N, true);
    if (noise_applied) {  // d(noise_pre) = dlogits * eps * softplus'(noise_pre), in place
      k->gate_noise_backward(dlogits, noise_pre, noise_eps, (int64_t)N * E);
      noise_gate.backward(dx, dlogits, x, N, true);
    }
  }

  // After the optimizer step: the bias moves towards balance by the step's loads (then zeroed).
  void update_expert_bias() {
    if (bias_cfg.enabled) k->expert_bias_update(bias_.get(), load_.get(), E, bias_cfg.update_rate, bias_cfg.center);
  }
  // The bias as the host holds it (checkpoints): empty without moe.expert_bias.
  std::vector<float> expert_bias() const {
    std::vector<float> b(bias_cfg.enabled ? size_t(E) : 0);
    if (!b.empty()) k->download(b.data(), bias_.get(), b.size());
    return b;
  }
  void set_expert_bias(const std::vector<float>& b) {
    SCMOE_CHECK(bias_cfg.enabled && b.size() == size_t(E),
                "expert bias of " << b.size() << " values for " << E << " experts (enabled: " << bias_cfg.enabled << ")");
    k->upload(bias_.get(), b.data(), b.size());
  }

  // What the last forward observed (host reads: call after the streams are synchronised).
  MoeStats read_stats() {
    MoeStats s;
    Acc l[3];
    k->download(l, losses, 3);
    s.aux = double(l[0]), s.z = double(l[1]), s.seq = double(l[2]);
    s.routed.assign(E, 0);
    k->download(s.routed.data(), route_counts, size_t(E));
    if (bias_cfg.enabled) {
      const std::vector<float> b = expert_bias();
      s.bias_min = *std::min_element(b.begin(), b.end()), s.bias_max = *std::max_element(b.begin(), b.end());
    }
    s.tokens_per_expert.assign(E, 0);
    const std::vector<int64_t> rows = dispatcher.read_expert_rows();
    for (int le = 0; le < El; le++) s.tokens_per_expert[first_expert + le] = rows[le];
    s.dropped = dispatcher.read_dropped();
    s.assignments = (int64_t)N * kc;  // this rank's tokens' choices (summed over ranks by the trainer)
    return s;
  }

 private:
  // moe.force_balanced_routing (benchmarks): logits drawn from N(0, 1), as Megatron-Core's
  // moe_router_force_load_balancing does, so every expert gets about the same number of rows whatever
  // the gate has learnt. Its own stream per layer and rank, so the training RNG's draws stay as they
  // were; not checkpointed (a resumed run routes differently).
  void draw_balanced_logits() {
    for (T& v : host_logits_) v = T(balance_rng.normal());
    k->upload(logits, host_logits_.data(), host_logits_.size());
  }
  bool noise_applied = false, count_loads_ = false;
  typename B::template Array<float> bias_;     // [E] fp32, outside the optimizer
  typename B::template Array<int64_t> load_;   // [E] this step's global loads before capacity
  std::vector<S> host_eps_;
  std::vector<T> host_logits_;
};

}  // namespace scmoe
