// GPT forward/backward orchestration (see gpt.h): builds the blocks of the configured architecture,
// wires each routed branch to its input tap, and routes the tap gradients back in backward.
#include "model/gpt.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/rng.h"
#include "core/trace.h"
#include "kernels/ops.h"

namespace scmoe {

namespace {
// Routed experts per token when moe.top_k is 0 ("architecture default").
int default_top_k(const std::string& arch) { return arch == "moe" ? 2 : 1; }
}  // namespace

template <class T>
GPT<T>::GPT(const Config& cfg, int micro_batch, Communicator* comm)
    : mc_(cfg.model), B_(micro_batch), Tn_(cfg.model.seq_len), C_(cfg.model.d_model),
      V_(cfg.model.vocab_size) {
  SCMOE_CHECK(mc_.d_model % mc_.n_head == 0, "model.d_model (" << mc_.d_model
                                                 << ") must be divisible by model.n_head (" << mc_.n_head << ")");
  const std::string& arch = mc_.arch;
  SCMOE_CHECK(arch == "dense" || arch == "moe" || arch == "shared_expert" || arch == "scmoe",
              "model.arch: expected dense|moe|shared_expert|scmoe, got '" << arch << "'");
  const MoeConfig& mo = cfg.moe;
  const int k = mo.top_k > 0 ? mo.top_k : default_top_k(arch);
  d_expert_ = mo.d_expert > 0 ? mo.d_expert : mc_.d_ff;
  top_k_ = arch == "dense" ? 0 : k;
  const int pos = cfg.scmoe.position;
  if (arch != "dense") {
    SCMOE_CHECK(k <= mo.num_experts, "moe.top_k (" << k << ") must be <= moe.num_experts (" << mo.num_experts << ")");
    SCMOE_CHECK(mo.every >= 1 && mo.every <= mc_.n_layer,
                "moe.every (" << mo.every << ") must be in [1, model.n_layer=" << mc_.n_layer << "]");
    SCMOE_CHECK(arch != "scmoe" || pos == 1 || mo.every >= 2,
                "scmoe.position " << pos << " taps the preceding block, so moe.every must be >= 2 (got "
                                  << mo.every << "); use scmoe.position=1 for MoE in every block");
  }
  Combine comb = cfg.scmoe.combine == "cg1" ? Combine::cg1 : cfg.scmoe.combine == "cg2" ? Combine::cg2 : Combine::add;

  bool rms = mc_.norm == "rmsnorm";
  wte_off_ = table_.add("wte", {V_, C_}, true, Init::normal, mc_.init_std);
  wpe_off_ = table_.add("wpe", {Tn_, C_}, true, Init::normal, mc_.init_std);
  blocks_.resize(mc_.n_layer);
  taps_.assign(mc_.n_layer, Tap{});
  for (int l = 0; l < mc_.n_layer; l++) {
    std::string name = "blocks." + std::to_string(l);
    Block<T>& b = blocks_[l];
    b.setup(table_, name, mc_);
    bool is_moe = arch != "dense" && (l + 1) % mo.every == 0;
    if (!is_moe) {
      b.setup_dense(table_, name, mc_);
      continue;
    }
    Tap& t = taps_[l];
    if (arch == "scmoe") {
      t.kind = pos == 2 ? TapKind::u : TapKind::norm_of_input;
      t.src = pos == 1 ? l : l - 1;
      b.setup_moe(table_, name, mc_, mo, k, true, comb, pos != 2, l, comm);
    } else {
      t.kind = TapKind::u;
      t.src = l;
      b.setup_moe(table_, name, mc_, mo, k, arch == "shared_expert", Combine::add, false, l, comm);
    }
  }
  lnf_.setup(table_, "ln_f", C_, rms);
  params_.assign(table_.total(), T(0));
  grads_.assign(table_.total(), T(0));
  for (auto& b : blocks_) b.bind(params_.data(), grads_.data());
  lnf_.bind(params_.data(), grads_.data());

  arena_.begin_measure();
  alloc_activations(arena_);
  arena_.allocate_measured();
  alloc_activations(arena_);
  // ScMoE's branches overlap their exchanges with the backbone on a communication stream; standard
  // top-k MoE and shared-expert layers keep the sequential order.
  // In a single process without a simulated link the "exchanges" are local copies: nothing to hide,
  // and handing them to another thread only costs wake-ups, so they run inline.
  const bool has_link = cfg.comm.simulate_link.bandwidth_gb_s > 0 || cfg.comm.simulate_link.latency_us > 0;
  const bool has_comm = (comm && comm->world_size() > 1) || has_link;
  const bool overlap = arch == "scmoe" && cfg.comm.overlap && has_comm;
  const std::string& slot = cfg.scmoe.expert_slot;
  auto_slot_ = overlap && slot == "auto";
  // Chunked pipelining (moe.pipeline_degree) also needs the stream, for any architecture.
  if (overlap || (has_comm && mo.pipeline_degree > 1)) comm_stream_ = make_cpu_stream("comm", true);
  SimulatedLink local_link{cfg.comm.simulate_link.bandwidth_gb_s, cfg.comm.simulate_link.latency_us};
  for (int l = 0; l < mc_.n_layer; l++) {  // wire routed inputs and their gradients
    Block<T>& b = blocks_[l];
    if (!b.moe) continue;
    if (taps_[l].kind == TapKind::u) {
      b.moe_in = blocks_[taps_[l].src].u;
      blocks_[taps_[l].src].du_taps.push_back(b.moe->dx);
    } else {
      b.moe_in = b.moe_norm_out;
    }
    b.moe->dispatcher.stream = comm_stream_.get();
    b.moe->dispatcher.measure_peer_wait = cfg.comm.measure_peer_wait;
    if (!comm || comm->world_size() == 1) b.moe->dispatcher.local_link = local_link;
    BranchTap t;
    t.block = l, t.norm_of_input = taps_[l].kind == TapKind::norm_of_input, t.src = taps_[l].src;
    t.overlap = overlap;
    t.slot = auto_slot_ || !overlap ? 4 : std::stoi(slot);
    branches_.push_back(t);
  }
  dmoe_.assign(mc_.n_layer, nullptr);
  build_plans();
}

template <class T>
void GPT<T>::alloc_activations(Arena& a) {
  size_t NC = (size_t)B_ * Tn_ * C_;
  int N = B_ * Tn_;
  resid_.assign(mc_.n_layer + 1, nullptr);
  for (auto& r : resid_) r = a.alloc<T>(NC);
  T* tmp = a.alloc<T>(NC);
  for (auto& b : blocks_) b.alloc(a, B_, Tn_, tmp);
  lnf_.alloc(a, N);
  lnf_out_ = a.alloc<T>(NC);
  logits_ = a.alloc<T>((size_t)N * V_);
  losses_ = a.alloc<T>(N);
  dresid_ = a.alloc<T>(NC);
  scratch_.alloc(a, N, C_, std::max(mc_.d_ff, d_expert_));
}

template <class T>
void GPT<T>::init(uint64_t seed) {
  for (const auto& s : table_.specs()) {
    T* p = params_.data() + s.offset;
    Rng rng(hash_string(s.name, seed));
    for (size_t i = 0; i < s.numel; i++) {
      if (s.init == Init::normal) p[i] = T(rng.normal() * s.std);
      else p[i] = s.init == Init::ones ? T(1) : T(0);
    }
  }
}

template <class T>
double GPT<T>::forward(const int32_t* inputs, const int32_t* targets, T grad_scale, Rng* rng) {
  int N = B_ * Tn_;
  inputs_ = inputs;
  grad_scale_ = grad_scale;
  const T* wte = params_.data() + wte_off_;
  ops::encoder_forward(resid_[0], inputs, wte, params_.data() + wpe_off_, B_, Tn_, C_);
  run_plan(fwd_plan_, fwd_ms_, rng);
  lnf_.forward(lnf_out_, resid_[mc_.n_layer], N);
  ops::matmul_forward(logits_, lnf_out_, wte, (const T*)nullptr, N, C_, V_);
  if (!targets) return 0.0;
  for (int i = 0; i < N; i++)
    SCMOE_CHECK(targets[i] >= 0 && targets[i] < V_, "target token " << targets[i] << " outside the vocabulary");
  return ops::crossentropy_forward_backward(logits_, losses_, targets, N, V_, grad_scale, grad_scale > 0);
}

template <class T>
void GPT<T>::backward() {
  SCMOE_CHECK(grad_scale_ > 0, "backward() needs a forward() with grad_scale > 0");
  int N = B_ * Tn_;
  T* wte = params_.data() + wte_off_;
  T* dwte = grads_.data() + wte_off_;
  T* dlnf = scratch_.dnorm;
  ops::matmul_backward(dlnf, dwte, (T*)nullptr, logits_, lnf_out_, wte, N, C_, V_, false);
  lnf_.backward(dresid_, dlnf, resid_[mc_.n_layer], N, false);
  run_plan(bwd_plan_, bwd_ms_, nullptr);
  ops::encoder_backward(dwte, grads_.data() + wpe_off_, dresid_, inputs_, B_, Tn_, C_);
  grad_scale_ = 0;  // the dlogits buffer is consumed
}

template <class T>
void GPT<T>::run(const Action& a, Rng* rng) {
  const int N = B_ * Tn_;
  Block<T>& b = blocks_[a.block];
  const Tap& tap = taps_[a.block];
  // The aux and z losses are per-micro-batch means, so they enter with grad_scale * N (= 1/accum).
  const double loss_scale = double(grad_scale_) * N;
  switch (a.op) {
    case Op::attn: b.forward_attn(resid_[a.block]); break;
    case Op::ffn: b.forward_ffn(); break;
    case Op::out: b.forward_out(resid_[a.block + 1]); break;
    case Op::moe_begin:
      if (tap.kind == TapKind::norm_of_input) b.moe_norm.forward(b.moe_norm_out, resid_[tap.src], N);
      b.moe->forward_begin(b.moe_in, rng);
      break;
    case Op::moe_compute: b.moe->forward_compute(); break;
    case Op::moe_finish: b.moe->forward_finish(b.moe_out); break;
    case Op::bw_out: dmoe_[a.block] = b.out_backward(dresid_, scratch_); break;
    case Op::bw_ffn: b.ffn_backward(scratch_); break;
    case Op::bw_join: b.join_backward(dresid_, scratch_); break;
    case Op::bw_attn: b.attn_backward(dresid_, resid_[a.block], scratch_); break;
    case Op::bw_norm_tap: b.moe_norm.backward(dresid_, b.moe->dx, resid_[tap.src], N, true); break;
    case Op::bw_moe_begin: b.moe->backward_begin(dmoe_[a.block]); break;
    case Op::bw_moe_compute: b.moe->backward_compute(); break;
    case Op::bw_moe_finish: b.moe->backward_finish(loss_scale); break;
  }
}

template <class T>
void GPT<T>::run_plan(const std::vector<Action>& plan, std::vector<double>& ms, Rng* rng) {
  ms.resize(plan.size(), 0.0);
  Tracer& tracer = Tracer::get();
  for (size_t i = 0; i < plan.size(); i++) {
    const double t0 = Tracer::now_us();
    run(plan[i], rng);
    const double t1 = Tracer::now_us();
    ms[i] += (t1 - t0) / 1000;
    if (tracer.on()) tracer.add(describe({plan[i]}), 0, t0, t1);
  }
}

template <class T>
void GPT<T>::build_plans() {
  fwd_plan_ = forward_plan(mc_.n_layer, branches_);
  bwd_plan_ = backward_plan(mc_.n_layer, branches_);
  fwd_ms_.assign(fwd_plan_.size(), 0.0);
  bwd_ms_.assign(bwd_plan_.size(), 0.0);
}

template <class T>
std::vector<typename GPT<T>::CommTiming> GPT<T>::take_comm_timings() {
  std::vector<CommTiming> out;
  for (int l = 0; l < mc_.n_layer; l++) {
    if (!blocks_[l].moe) continue;
    auto& d = blocks_[l].moe->dispatcher;
    out.push_back({l, d.comm_ms, d.exposed_ms, d.peer_wait_ms, d.exposed_peer_wait_ms, d.peer_wait_known});
    d.comm_ms = d.exposed_ms = d.peer_wait_ms = d.exposed_peer_wait_ms = 0;
  }
  return out;
}

template <class T>
std::string GPT<T>::tune_slots(int steps_seen) {
  if (!auto_slot_ || steps_seen != kAutoSlotSteps) return "";
  // The paper's Eq. 11 on the times measured so far (all with K = 4, where the dispatch overlaps every
  // unit): pick K minimising |sum_{i<K} comp_i - T_dispatch| + |sum_{i>=K} comp_i - T_combine|.
  std::string log;
  for (BranchTap& t : branches_) {
    if (!t.overlap) continue;
    const auto& d = blocks_[t.block].moe->dispatcher;
    double t_dispatch = d.exchange_ms[0], t_combine = d.exchange_ms[1];
    std::vector<double> comp;
    size_t b = std::find(fwd_plan_.begin(), fwd_plan_.end(), Action{Op::moe_begin, t.block}) - fwd_plan_.begin();
    size_t f = std::find(fwd_plan_.begin(), fwd_plan_.end(), Action{Op::moe_finish, t.block}) - fwd_plan_.begin();
    for (size_t i = b + 1; i < f; i++) {
      const Op op = fwd_plan_[i].op;
      if (op == Op::attn || op == Op::ffn) comp.push_back(fwd_ms_[i]);
      else if (op == Op::out && !comp.empty()) comp.back() += fwd_ms_[i];
    }
    int best = 1;
    double best_cost = 1e300, window_before = 0, window_after = 0;
    for (int K = 1; K <= int(comp.size()) + 1; K++) {
      double before = 0, after = 0;
      for (int i = 0; i < int(comp.size()); i++) (i < K - 1 ? before : after) += comp[i];
      double cost = std::fabs(before - t_dispatch) + std::fabs(after - t_combine);
      if (cost < best_cost) best_cost = cost, best = K, window_before = before, window_after = after;
    }
    t.slot = best;
    // The windows say whether each exchange can be hidden at all: an exchange longer than its window
    // leaves the difference exposed whatever the schedule. Logged per step (times summed over steps).
    const double n = steps_seen;
    char buf[200];
    std::snprintf(buf, sizeof buf,
                  "%sblock %d: expert slot %d (per step: dispatch %.2f ms in a %.2f ms window, combine %.2f ms "
                  "in %.2f ms; mean of %d steps)",
                  log.empty() ? "" : "; ", t.block, best, t_dispatch / n, window_before / n, t_combine / n,
                  window_after / n, steps_seen);
    log += buf;
  }
  build_plans();
  return log;
}

template <class T>
void GPT<T>::zero_grad() {
  ops::fill(grads_.data(), T(0), (int64_t)grads_.size());
}

template <class T>
double GPT<T>::aux_loss() const {
  double s = 0;
  for (const auto& b : blocks_)
    if (b.moe) s += b.moe->aux_coef * b.moe->stats.aux + b.moe->z_coef * b.moe->stats.z;
  return s;
}

template <class T>
std::vector<std::pair<int, const MoeStats*>> GPT<T>::moe_stats() const {
  std::vector<std::pair<int, const MoeStats*>> out;
  for (int l = 0; l < mc_.n_layer; l++)
    if (blocks_[l].moe) out.push_back({l, &blocks_[l].moe->stats});
  return out;
}

template class GPT<float>;
template class GPT<double>;

}  // namespace scmoe
