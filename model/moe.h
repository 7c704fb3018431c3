// A mixture-of-experts layer, split as Megatron-Core splits it: router (gate logits, softmax, top-k,
// losses) -> dispatcher (rows to the experts' ranks, capacity) -> experts (GELU MLPs on their rows)
// -> combine (rows back, weighted by the gates). Only the dispatcher knows about other ranks; the
// router's statistics (aux / z losses) are reduced over ranks so every loss and gradient equals the
// single-process one on the same global batch.
#pragma once
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/rng.h"
#include "model/dispatcher.h"
#include "model/layers.h"
#include "train/config.h"

namespace scmoe {

// What a MoE layer observed in its last forward (for logs and metrics). Counts are this rank's
// share (its experts); aux and z are global.
struct MoeStats {
  double aux = 0, z = 0;
  int64_t dropped = 0, assignments = 0;
  std::vector<int64_t> tokens_per_expert;  // [E] admitted rows; zeros for experts on other ranks
};

template <class T>
struct MoE {
  int N = 0, C = 0, F = 0, E = 0, k = 1, W = 1, El = 0, first_expert = 0, layer = 0;
  bool renormalize = true, noise = false, force_balanced = false;
  Rng balance_rng;
  double capacity_factor = 0, aux_coef = 0, z_coef = 0;
  int pipeline_degree = 1;
  Communicator* comm = nullptr;
  Linear<T> gate, noise_gate;
  std::vector<MLP<T>> experts;  // this rank's experts: global ids first_expert .. first_expert+El-1
  Dispatcher<T> dispatcher;
  MoeStats stats;

  // saved by forward
  T *logits = nullptr, *probs = nullptr, *topk_gate = nullptr, *xe = nullptr, *ye = nullptr;
  T *noise_pre = nullptr, *noise_eps = nullptr, *hidden_h = nullptr, *hidden_g = nullptr;
  int32_t* topk_idx = nullptr;
  std::vector<int64_t> route_counts;  // global assignments per expert before capacity
  std::vector<double> pmean;
  const T* x = nullptr;
  int64_t N_global = 0;
  // backward scratch; dx is this layer's gradient w.r.t. its input (read by whoever owns the input)
  T *dlogits = nullptr, *dgate = nullptr, *dye = nullptr, *dxe = nullptr, *dh = nullptr, *dg = nullptr;
  T* dx = nullptr;

  void setup(ParamTable& pt, const std::string& name, const ModelConfig& mc, const MoeConfig& moe, int top_k,
             int layer_index, Communicator* c) {
    C = mc.d_model, F = moe.d_expert > 0 ? moe.d_expert : mc.d_ff, E = moe.num_experts, k = top_k;
    layer = layer_index, comm = c;
    W = c ? c->world_size() : 1;
    SCMOE_CHECK(E % W == 0, "moe.num_experts (" << E << ") must be divisible by the world size (" << W
                                                << ") for expert parallelism");
    El = E / W;
    first_expert = (c ? c->rank() : 0) * El;
    renormalize = moe.renormalize, noise = moe.gate_noise, force_balanced = moe.force_balanced_routing;
    balance_rng = Rng(hash_string("balanced-routing", (uint64_t)layer_index * 1000003u + (c ? c->rank() : 0)));
    capacity_factor = moe.capacity_factor, aux_coef = moe.aux_loss_coef, z_coef = moe.z_loss_coef;
    pipeline_degree = moe.pipeline_degree;
    SCMOE_CHECK(pipeline_degree == 1 || capacity_factor > 0,
                "moe.pipeline_degree " << pipeline_degree << " needs fixed-size exchanges: set moe.capacity_factor > 0 "
                                       "(dropless exchanges are sized by the data)");
    double proj_std = mc.init_std / std::sqrt(2.0 * mc.n_layer);
    gate.setup(pt, name + ".gate", C, E, false, mc.init_std);
    if (noise) noise_gate.setup(pt, name + ".noise", C, E, false, mc.init_std);
    experts.resize(El);
    for (int le = 0; le < El; le++)
      experts[le].setup(pt, name + ".experts." + std::to_string(first_expert + le), C, F, mc.init_std, proj_std);
    dispatcher.setup(E, k, C, c);
    dispatcher.layer = layer_index;
    route_counts.assign(E, 0), pmean.assign(E, 0);
  }
  void bind(T* p, T* g) {
    gate.bind(p, g);
    if (noise) noise_gate.bind(p, g);
    for (auto& ex : experts) ex.bind(p, g);
  }
  void alloc(Arena& a, int N_) {
    N = N_;
    N_global = (int64_t)N * W;
    size_t NE = (size_t)N * E, Nk = (size_t)N * k, rows = Nk * W;  // rows: the most this rank can admit
    logits = a.alloc<T>(NE), probs = a.alloc<T>(NE), dlogits = a.alloc<T>(NE);
    if (noise) noise_pre = a.alloc<T>(NE), noise_eps = a.alloc<T>(NE);
    topk_idx = a.alloc<int32_t>(Nk);
    topk_gate = a.alloc<T>(Nk), dgate = a.alloc<T>(Nk);
    xe = a.alloc<T>(rows * C), ye = a.alloc<T>(rows * C), dye = a.alloc<T>(rows * C), dxe = a.alloc<T>(rows * C);
    hidden_h = a.alloc<T>(rows * F), hidden_g = a.alloc<T>(rows * F);
    dh = a.alloc<T>(rows * F), dg = a.alloc<T>(rows * F);
    dx = a.alloc<T>((size_t)N * C);
    // The packed layout moves only the rows that exist; the fixed one pads every (source, expert) pair
    // to the capacity (4x the rows with capacity_factor 2 on 2 ranks), which only chunked pipelining
    // needs here (the counts are exchanged first either way on the CPU).
    dispatcher.alloc(a, N, capacity(), capacity_factor > 0 && pipeline_degree > 1, pipeline_degree);
  }

  // Rows per expert over the global batch (DESIGN.md section 3); dropless when capacity_factor <= 0.
  int64_t capacity() const {
    if (capacity_factor <= 0) return N_global * k;
    return std::min<int64_t>((int64_t)k * (int64_t)std::ceil(capacity_factor * N_global / E), N_global);
  }

  // y[N,C] = MoE(x) in three phases, so the model can compute between them while rows travel:
  //   begin:   gate, router, plan; rows posted to the experts' ranks ("gate and encode")
  //   compute: rows received, experts run, outputs posted back (the expert slot)
  //   finish:  outputs received and combined with the gates into y ("decode")
  // `rng` draws the gate noise in training (nullptr: no noise, e.g. evaluation).
  void forward_begin(const T* x_, Rng* rng) {
    x = x_;
    gate.forward(logits, x, N);
    noise_applied = noise && rng;
    if (noise_applied) add_gate_noise(*rng);
    if (force_balanced) draw_balanced_logits();
    auto L = ops::router_forward(logits, N, E, k, renormalize, probs, topk_idx, topk_gate, pmean.data(),
                                 route_counts.data());
    reduce_router_stats(L);
    dispatcher.dispatch_begin(x, topk_idx);
  }
  // Chunk by chunk (moe.pipeline_degree): chunk c's experts run while later chunks are still arriving.
  void forward_compute() {
    for (int c = 0; c < dispatcher.P; c++) {
      dispatcher.dispatch_finish(c, xe);
      for (int le = 0; le < El; le++) {
        const int64_t b = dispatcher.seg_begin(c, le);
        bind_expert_buffers(le, b);
        experts[le].forward(ye + b * C, xe + b * C, (int)(dispatcher.seg_end(c, le) - b));
      }
      dispatcher.combine_begin(c, ye);
    }
  }
  void forward_finish(T* y) {
    dispatcher.combine_finish(y, topk_gate);
    record_load();
  }

  // Backward in the mirrored phases. dy: gradient of the output. loss_scale: d(objective)/d(this
  // rank's per-micro-batch loss share), i.e. grad_scale * N. finish overwrites dx (the gradient
  // w.r.t. the input); parameter gradients are accumulated.
  void backward_begin(const T* dy) { dispatcher.combine_backward_begin(dgate, dy, topk_gate); }
  void backward_compute() {
    for (int c = 0; c < dispatcher.P; c++) {
      dispatcher.combine_backward_finish(c, dye);
      for (int le = 0; le < El; le++) {
        const int64_t b = dispatcher.seg_begin(c, le);
        bind_expert_buffers(le, b);
        GradScratch<T> s;
        s.dh = dh + b * F, s.dg = dg + b * F;
        experts[le].backward(dxe + b * C, dye + b * C, xe + b * C, (int)(dispatcher.seg_end(c, le) - b), s, false);
      }
      dispatcher.dispatch_backward_begin(c, dxe);
    }
  }
  void backward_finish(double loss_scale) {
    dispatcher.dispatch_backward_finish(dx);
    // The kernel normalises by the local N; the losses are means over N_global tokens with global
    // counts, hence the extra N / N_global factors (both 1 in a single process).
    const double f = double(N) / double(N_global);
    ops::router_backward(dlogits, dgate, logits, probs, topk_idx, route_counts.data(), N, E, k, renormalize,
                         aux_coef * loss_scale * f, z_coef * loss_scale);
    if (force_balanced) std::fill(dlogits, dlogits + (size_t)N * E, T(0));  // the drawn logits are constants
    gate.backward(dx, dlogits, x, N, true);
    if (noise_applied) {
      // d(noise_pre) = dlogits * eps * softplus'(noise_pre); reuse dlogits in place.
      for (size_t i = 0; i < (size_t)N * E; i++) dlogits[i] *= noise_eps[i] / (T(1) + std::exp(-noise_pre[i]));
      noise_gate.backward(dx, dlogits, x, N, true);
    }
  }

 private:
  // Points an expert's saved activations at its segment's rows (segments never share rows).
  void bind_expert_buffers(int le, int64_t first_row) {
    experts[le].h = hidden_h + first_row * F, experts[le].g = hidden_g + first_row * F;
  }
  // moe.force_balanced_routing (benchmarks): logits drawn from N(0, 1), as Megatron-Core's
  // moe_router_force_load_balancing does, so every expert gets about the same number of rows whatever
  // the gate has learnt. Its own stream per layer and rank, so the training RNG's draws stay as they
  // were; not checkpointed (a resumed run routes differently).
  void draw_balanced_logits() {
    for (size_t i = 0; i < (size_t)N * E; i++) logits[i] = T(balance_rng.normal());
  }
  // Noisy top-k gating (Shazeer et al.): logits += N(0,1) * softplus(x . W_noise). Each token's noise
  // comes from a stream keyed by (step draw, layer, global token index), so it is the same whichever
  // rank holds the token; the trainer's RNG (checkpointed) advances once per forward.
  void add_gate_noise(Rng& r) {
    noise_gate.forward(noise_pre, x, N);
    const uint64_t base = r.next_u64() ^ (0x9E3779B97F4A7C15ull * (uint64_t)(layer + 1));
    const int64_t first_token = (int64_t)(comm ? comm->rank() : 0) * N;
    for (int n = 0; n < N; n++) {
      Rng tr(base + 0xD1B54A32D192ED03ull * (uint64_t)(first_token + n));
      for (int e = 0; e < E; e++) {
        size_t i = (size_t)n * E + e;
        noise_eps[i] = T(tr.normal());
        T z = noise_pre[i];
        T softplus = z > T(20) ? z : std::log1p(std::exp(z));
        logits[i] += noise_eps[i] * softplus;
      }
    }
  }
  // aux = E * sum_e pmean_e * f_e and z = mean lse^2 over the global batch: sum the per-rank parts.
  void reduce_router_stats(const ops::RouterLosses& L) {
    if (W == 1) {
      stats.aux = L.aux, stats.z = L.z;
      return;
    }
    std::vector<double> buf(2 * E + 1);
    for (int e = 0; e < E; e++) buf[e] = double(route_counts[e]), buf[E + e] = pmean[e] * N;
    buf[2 * E] = L.z * N;
    dispatcher.run_blocking([&] { comm->all_reduce_sum(buf.data(), buf.size(), DType::f64, nullptr); });
    double aux = 0;
    for (int e = 0; e < E; e++) {
      route_counts[e] = (int64_t)std::llround(buf[e]);
      pmean[e] = buf[E + e] / N_global;
      aux += pmean[e] * buf[e] / double(N_global * k);
    }
    stats.aux = aux * E;
    stats.z = buf[2 * E] / N_global;
  }
  void record_load() {
    stats.tokens_per_expert.assign(E, 0);
    for (int le = 0; le < El; le++) stats.tokens_per_expert[first_expert + le] = dispatcher.expert_rows(le);
    stats.dropped = dispatcher.dropped;
    stats.assignments = (int64_t)N * k;  // this rank's tokens' choices (summed over ranks by the trainer)
  }
  bool noise_applied = false;
};

}  // namespace scmoe
