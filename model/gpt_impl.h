// GPT<B>'s member definitions (see gpt.h), for the translation units that instantiate it: gpt.cpp
// (Cpu<float>, Cpu<double>) and kernels/cuda's model instantiation (cuda::Cuda<float>, <bf16>).
// Builds the blocks the architecture describes, wires each routed branch to its input tap, runs the
// schedule's action lists, and routes the tap gradients back in backward.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <type_traits>

#include "core/rng.h"
#include "core/trace.h"
#include "model/gpt.h"

namespace scmoe {

template <class B>
GPT<B>::GPT(const Config& cfg, int micro_batch, Communicator* comm, Options opt)
    : cfg_(cfg), mc_(cfg.model), arch_(describe_architecture(cfg, comm ? comm->rank() : 0, comm ? comm->world_size() : 1)),
      B_(micro_batch), Tn_(cfg.model.seq_len), C_(cfg.model.d_model), V_(cfg.model.vocab_size), comm_(comm),
      training_(opt.training), timeline_(k_) {
  SCMOE_CHECK(micro_batch >= 0, "micro-batch size must be >= 0, got " << micro_batch);
  SCMOE_CHECK(opt.training || micro_batch == 0 || opt.resident_experts,
              "a model without resident experts is for generation (micro_batch 0)");
  KernelShapes shapes;
  shapes.B = std::max(B_, 1), shapes.Tn = Tn_, shapes.C = C_, shapes.V = V_, shapes.H = mc_.n_head;
  shapes.F = std::max(mc_.d_ff, arch_.Fe), shapes.E = arch_.E, shapes.k = arch_.k;
  k_.reserve(shapes);
  lay_out_weights(opt);

  const ParamViews<B> views{weights_, grads_.get(), place_.empty() ? nullptr : &place_};
  blocks_.resize(mc_.n_layer);
  for (int l = 0; l < mc_.n_layer; l++) {
    const BlockArch& ba = arch_.blocks[l];
    Block<B>& b = blocks_[l];
    b.bind(k_, ba, views);
    if (!ba.moe) continue;
    b.moe = std::make_unique<MoE<B>>();
    b.moe->setup(k_, ba, cfg, arch_.k, l, comm);
    b.moe->bind(ba, views);
  }
  lnf_.bind(k_, arch_.lnf, views);
  if (B_ == 0) return;  // weights only

  arena_.begin_measure();
  alloc_activations(arena_);
  memory_.weights = param_bytes_;
  memory_.optimizer = training_ ? 2 * table().total() * sizeof(G) : 0;
  memory_.activations = arena_.bytes();
  B::record_memory_estimate(memory_.total(), memory_.describe());
  arena_mem_ = typename B::template Array<char>(arena_.bytes(), "the activation arena");
  arena_.place_measured(arena_mem_.get());
  alloc_activations(arena_);

  // ScMoE's branches overlap their exchanges with the backbone on a communication stream; standard
  // top-k MoE and shared-expert layers keep the sequential order. In a single process without a
  // simulated link the "exchanges" are local copies: nothing to hide, and handing them to another
  // stream only costs wake-ups, so they run in order.
  // Chunked pipelining (moe.pipeline_degree) also runs on the stream, for any architecture; comm.overlap
  // false keeps every exchange on the compute stream (the sequential reference).
  const bool has_link = cfg.comm.simulate_link.bandwidth_gb_s > 0 || cfg.comm.simulate_link.latency_us > 0;
  const bool has_comm = (comm && comm->world_size() > 1) || has_link;
  const bool scmoe = mc_.arch == "scmoe";
  const bool side = cfg.comm.overlap && has_comm && (scmoe || cfg.moe.pipeline_degree > 1);
  const bool overlap = side && scmoe;
  const std::string& slot = cfg.scmoe.expert_slot;
  auto_slot_ = overlap && slot == "auto";
  if (side) side_ = k_.make_side_stream("comm", true);
  const SimulatedLink local_link{cfg.comm.simulate_link.bandwidth_gb_s, cfg.comm.simulate_link.latency_us};
  for (int l = 0; l < mc_.n_layer; l++) {  // wire routed inputs and their gradients
    Block<B>& b = blocks_[l];
    if (!b.moe) continue;
    if (b.tap == TapKind::u) {
      b.moe_in = blocks_[b.tap_src].u;
      blocks_[b.tap_src].du_taps.push_back(b.moe->dx);
    } else {
      b.moe_in = b.moe_norm_out;
    }
    Dispatcher<B>& d = b.moe->dispatcher;
    d.compute = &k_.compute();
    d.side = side_ ? side_.get() : &k_.compute();
    d.order = &order_, d.timeline = &timeline_;
    d.measure_peer_wait = cfg.comm.measure_peer_wait;
    if (!comm || comm->world_size() == 1) d.local_link = local_link;
    BranchTap t;
    t.block = l, t.norm_of_input = b.tap == TapKind::norm_of_input, t.src = b.tap_src;
    t.overlap = overlap;
    // auto times the first steps with the experts after every unit, then picks K (tune_slots).
    const int last = last_slot(mc_.n_layer, t);
    SCMOE_CHECK(!scmoe || slot == "auto" || std::stoi(slot) <= last,
                "scmoe.expert_slot " << slot << ": the routed branch of block " << l << " (scmoe.position "
                                     << cfg.scmoe.position << ") overlaps " << last - 1
                                     << " backbone units, so its expert slot is auto or 1.." << last);
    t.slot = overlap && slot != "auto" ? std::stoi(slot) : last;
    t.deferred_post = !B::kHostMemory && !d.fixed;  // a device reads the counts of a packed dispatch
    branches_.push_back(t);
  }
  dmoe_.assign(mc_.n_layer, nullptr);
  build_plans();
}

template <class B>
GPT<B>::~GPT() {
  // Work still queued refers to the buffers freed next; an error here was (or will not be) reported.
  try {
    if (side_) side_->synchronize();
    k_.synchronize();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "warning: GPT: waiting for queued work failed: %s\n", e.what());
  }
}

// The parameter buffers. Training: master (G), gradients (G) and, where T is narrower, the T copy the
// forward reads. Generation: the weights alone; with the experts offloaded, every other tensor packed
// in table order (place_) and the routed experts in host memory, each expert's span 256-byte aligned.
template <class B>
void GPT<B>::lay_out_weights(const Options& opt) {
  const ParamTable& t = table();
  const size_t P = t.total();
  const auto& specs = t.specs();
  if (opt.training) {
    master_store_ = typename B::template Array<G>(P, "parameters (master weights)");
    grads_ = typename B::template Array<G>(P, "gradients");
    master_ = master_store_.get();
    param_bytes_ = 2 * P * sizeof(G);
    if constexpr (std::is_same<T, G>::value) {
      weights_ = master_;
    } else {
      weights_store_ = typename B::template Array<T>(P, "parameters (working copy)");
      weights_ = weights_store_.get();
      param_bytes_ += P * sizeof(T);
    }
    return;
  }
  size_t n = P;
  if (!opt.resident_experts && arch_.has_moe()) {
    place_.assign(specs.size(), ParamViews<B>::kAbsent);
    n = 0;
    for (size_t i = 0; i < specs.size(); i++) {
      if (specs[i].expert) continue;
      place_[i] = n;
      n += (i + 1 < specs.size() ? specs[i + 1].offset : P) - specs[i].offset;
    }
    const size_t align = 256 / sizeof(T);
    size_t host = 0;
    expert_offsets_.assign(mc_.n_layer, {});
    for (int l = 0; l < mc_.n_layer; l++) {
      const ExpertParams& ex = arch_.blocks[l].experts;
      for (int e = 0; e < (arch_.blocks[l].moe ? ex.count : 0); e++) {
        host = (host + align - 1) / align * align;
        expert_offsets_[l].push_back(host);
        host += ex.span;
      }
    }
    host_experts_ = typename B::template PinnedArray<T>(host, "the routed experts (host memory)");
  }
  weights_store_ = typename B::template Array<T>(n, "parameters");
  weights_ = weights_store_.get();
  param_bytes_ = n * sizeof(T);
}

template <class B>
std::string GPT<B>::MemoryUse::describe() const {
  char buf[160];
  std::snprintf(buf, sizeof buf, "weights and gradients %.1f MiB, AdamW state %.1f MiB, activations %.1f MiB",
                weights / 1048576.0, optimizer / 1048576.0, activations / 1048576.0);
  return buf;
}

template <class B>
void GPT<B>::alloc_activations(Arena& a) {
  const size_t NC = (size_t)B_ * Tn_ * C_;
  const int N = B_ * Tn_;
  inputs_ = a.alloc<int32_t>(N), targets_ = a.alloc<int32_t>(N);
  resid_.assign(mc_.n_layer + 1, nullptr);
  for (auto& r : resid_) r = a.alloc<T>(NC);
  T* tmp = a.alloc<T>(NC);
  const AttentionSizes as = k_.attention_sizes(B_, Tn_, C_, mc_.n_head);
  T* att_scratch = a.alloc<T>(as.scratch);
  S* att_scratch_s = a.alloc<S>(as.scratch_s);
  for (auto& b : blocks_) b.alloc(a, B_, Tn_, tmp, att_scratch, att_scratch_s);
  lnf_.alloc(a, N);
  lnf_out_ = a.alloc<T>(NC);
  logits_ = a.alloc<T>((size_t)N * V_);
  losses_ = a.alloc<S>(N);
  loss_ = a.alloc<Acc>(1);
  dresid_ = a.alloc<T>(NC);
  scratch_.alloc(a, N, C_, std::max(mc_.d_ff, arch_.Fe));
}

template <class B>
void GPT<B>::init(uint64_t seed) {
  std::vector<G> host(table().total(), G(0));
  for (const auto& s : table().specs()) {
    G* p = host.data() + s.offset;
    Rng rng(hash_string(s.name, seed));
    for (size_t i = 0; i < s.numel; i++) {
      if (s.init == Init::normal) p[i] = G(rng.normal() * s.std);
      else p[i] = s.init == Init::ones ? G(1) : G(0);
    }
  }
  set_params(host.data());
}

template <class B>
void GPT<B>::set_params(const G* host) {
  const ParamTable& t = table();
  if (training_) {
    k_.upload(master_, host, t.total());
    if constexpr (!std::is_same<T, G>::value) k_.convert_weights(weights_, master_, t.total());
    return;
  }
  if (place_.empty()) return k_.upload_as(weights_, host, t.total());
  const auto& specs = t.specs();
  std::vector<T> staged(weights_store_.size());
  for (size_t i = 0; i < specs.size(); i++) {
    if (place_[i] == ParamViews<B>::kAbsent) continue;
    for (size_t j = 0; j < specs[i].numel; j++) staged[place_[i] + j] = T(host[specs[i].offset + j]);
  }
  k_.upload(weights_, staged.data(), staged.size());
  for (int l = 0; l < mc_.n_layer; l++) {
    const ExpertParams& ex = arch_.blocks[l].experts;
    for (size_t e = 0; e < expert_offsets_[l].size(); e++) {
      const G* src = host + ex.first.fc.w.offset + e * ex.stride;
      T* dst = host_experts_.get() + expert_offsets_[l][e];
      for (size_t j = 0; j < ex.span; j++) dst[j] = T(src[j]);
    }
  }
}

template <class B>
void GPT<B>::get_params(G* host) {
  SCMOE_CHECK(training_, "get_params: this model holds no master weights (built for generation)");
  k_.download(host, master_, table().total());
}

template <class B>
void GPT<B>::get_grads(G* host) {
  SCMOE_CHECK(training_, "get_grads: this model has no gradients (built for generation)");
  k_.download(host, grads_.get(), table().total());
}

template <class B>
void GPT<B>::forward_async(const int32_t* inputs, const int32_t* targets, double grad_scale, Rng* rng) {
  SCMOE_CHECK(B_ > 0, "forward: this model was built without activations (micro-batch 0)");
  const int N = B_ * Tn_;
  if (targets)
    for (int i = 0; i < N; i++)
      SCMOE_CHECK(targets[i] >= 0 && targets[i] < V_, "target token " << targets[i] << " outside the vocabulary");
  if (pending_) synchronize();  // the last micro-step's timings are taken before its marks are reused
  timeline_.start(k_.compute());
  order_.reset();
  for (auto& b : blocks_)
    if (b.moe) b.moe->dispatcher.start_step();
  timing_ = (auto_slot_ && steps_timed_ < kAutoSlotSteps) || Tracer::get().on();
  pending_ = true, stats_fresh_ = false;
  grad_scale_ = grad_scale, has_targets_ = targets != nullptr;
  k_.upload(inputs_, inputs, N);
  if (targets) k_.upload(targets_, targets, N);
  k_.encoder_forward(resid_[0], inputs_, weights_ + arch_.wte.offset, weights_ + arch_.wpe.offset, B_, Tn_, C_);
  run_plan(fwd_plan_, false, rng);
  lnf_.forward(lnf_out_, resid_[mc_.n_layer], N);
  k_.matmul_forward(logits_, lnf_out_, weights_ + arch_.wte.offset, (const T*)nullptr, N, C_, V_);
  if (targets) k_.crossentropy(logits_, losses_, targets_, N, V_, grad_scale, grad_scale > 0, loss_);
  else grad_scale_ = 0;
}

template <class B>
double GPT<B>::loss() {
  synchronize();
  if (!has_targets_) return 0.0;
  Acc l = 0;
  k_.download(&l, loss_, 1);
  return double(l);
}

template <class B>
void GPT<B>::backward() {
  SCMOE_CHECK(grad_scale_ > 0, "backward() needs a forward() with targets and grad_scale > 0");
  SCMOE_CHECK(training_, "backward: this model has no gradients (built for generation)");
  const int N = B_ * Tn_;
  const T* wte = weights_ + arch_.wte.offset;
  G* dwte = grads_.get() + arch_.wte.offset;
  T* dlnf = scratch_.dnorm;
  k_.matmul_backward(dlnf, dwte, (G*)nullptr, logits_, lnf_out_, wte, N, C_, V_, false);
  lnf_.backward(dresid_, dlnf, resid_[mc_.n_layer], N, false);
  pending_ = true, stats_fresh_ = false;
  run_plan(bwd_plan_, true, nullptr);
  k_.encoder_backward(dwte, grads_.get() + arch_.wpe.offset, dresid_, inputs_, B_, Tn_, C_, V_);
  grad_scale_ = 0;  // the dlogits buffer is consumed
}

template <class B>
void GPT<B>::run(const Action& a, Rng* rng) {
  const int N = B_ * Tn_;
  Block<B>& b = blocks_[a.block];
  // The aux and z losses are per-micro-batch means, so they enter with grad_scale * N (= 1/accum).
  const double loss_scale = grad_scale_ * N;
  switch (a.op) {
    case Op::attn: b.forward_attn(resid_[a.block]); break;
    case Op::ffn: b.forward_ffn(); break;
    case Op::out: b.forward_out(resid_[a.block + 1]); break;
    case Op::moe_begin:
      if (b.tap == TapKind::norm_of_input) b.moe_norm.forward(b.moe_norm_out, resid_[b.tap_src], N);
      b.moe->forward_begin(b.moe_in, rng);
      break;
    case Op::moe_post: b.moe->forward_post(); break;
    case Op::moe_compute: b.moe->forward_compute(); break;
    case Op::moe_finish: b.moe->forward_finish(b.moe_out); break;
    case Op::bw_out: dmoe_[a.block] = b.out_backward(dresid_, scratch_); break;
    case Op::bw_ffn: b.ffn_backward(scratch_); break;
    case Op::bw_join: b.join_backward(dresid_, scratch_); break;
    case Op::bw_attn: b.attn_backward(dresid_, resid_[a.block], scratch_); break;
    case Op::bw_norm_tap: b.moe_norm.backward(dresid_, b.moe->dx, resid_[b.tap_src], N, true); break;
    case Op::bw_moe_begin: b.moe->backward_begin(dmoe_[a.block]); break;
    case Op::bw_moe_compute: b.moe->backward_compute(); break;
    case Op::bw_moe_finish: b.moe->backward_finish(loss_scale); break;
  }
}

// Runs a plan's actions on the compute stream; when timing, an event after each action gives its
// duration (device time on CUDA) and the trace's compute track.
template <class B>
void GPT<B>::run_plan(const std::vector<Action>& plan, bool backward, Rng* rng) {
  std::vector<Event*>& marks = backward ? bwd_marks_ : fwd_marks_;
  marks.clear();
  if (timing_) marks.push_back(timeline_.mark(k_.compute()));
  for (const Action& a : plan) {
    run(a, rng);
    if (timing_) marks.push_back(timeline_.mark(k_.compute()));
  }
}

template <class B>
void GPT<B>::synchronize() {
  if (side_) side_->synchronize();
  k_.synchronize();
  if (!pending_) return;
  pending_ = false;
  for (auto& b : blocks_)
    if (b.moe) b.moe->dispatcher.collect_timings();
  if (!timing_) return;
  Tracer& tracer = Tracer::get();
  for (int pass = 0; pass < 2; pass++) {
    const std::vector<Action>& plan = pass ? bwd_plan_ : fwd_plan_;
    std::vector<Event*>& marks = pass ? bwd_marks_ : fwd_marks_;
    std::vector<double>& ms = pass ? bwd_ms_ : fwd_ms_;
    if (marks.size() != plan.size() + 1) continue;  // not run in this micro-step
    for (size_t i = 0; i < plan.size(); i++) {
      ms[i] += Timeline<B>::ms(marks[i], marks[i + 1]);
      if (tracer.on()) tracer.add(describe({plan[i]}), 0, timeline_.host_us(marks[i]), timeline_.host_us(marks[i + 1]));
    }
    marks.clear();
  }
}

template <class B>
void GPT<B>::build_plans() {
  fwd_plan_ = forward_plan(mc_.n_layer, branches_);
  bwd_plan_ = backward_plan(mc_.n_layer, branches_);
  fwd_ms_.assign(fwd_plan_.size(), 0.0);
  bwd_ms_.assign(bwd_plan_.size(), 0.0);
}

template <class B>
std::vector<typename GPT<B>::CommTiming> GPT<B>::take_comm_timings() {
  synchronize();
  std::vector<CommTiming> out;
  for (int l = 0; l < mc_.n_layer; l++) {
    if (!blocks_[l].moe) continue;
    auto& d = blocks_[l].moe->dispatcher;
    out.push_back({l, d.comm_ms, d.exposed_ms, d.peer_wait_ms, d.exposed_peer_wait_ms, d.peer_wait_known});
    d.comm_ms = d.exposed_ms = d.peer_wait_ms = d.exposed_peer_wait_ms = 0;
  }
  return out;
}

template <class B>
std::string GPT<B>::tune_slots(int steps_seen) {
  if (auto_slot_) steps_timed_ = steps_seen;
  if (!auto_slot_ || steps_seen != kAutoSlotSteps) return "";
  // The paper's Eq. 11 on the times measured so far (all with the last K, where the dispatch overlaps
  // every unit): pick K minimising |sum_{i<K} comp_i - T_dispatch| + |sum_{i>=K} comp_i - T_combine|.
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

template <class B>
void GPT<B>::zero_grad() {
  k_.zero(grads_.get(), table().total());
}

template <class B>
void GPT<B>::take_stats() {
  synchronize();
  if (stats_fresh_) return;
  stats_.clear();
  for (int l = 0; l < mc_.n_layer; l++)
    if (blocks_[l].moe) stats_.push_back({l, blocks_[l].moe->read_stats()});
  stats_fresh_ = true;
}

template <class B>
double GPT<B>::aux_loss() {
  take_stats();
  double s = 0;
  for (const auto& [l, st] : stats_) {
    const MoE<B>& m = *blocks_[l].moe;
    s += m.aux_coef * st.aux + m.z_coef * st.z + m.seq_coef * st.seq;
  }
  return s;
}

template <class B>
void GPT<B>::update_expert_biases() {
  for (Block<B>& b : blocks_)
    if (b.moe) b.moe->update_expert_bias();
}

template <class B>
std::vector<std::pair<std::string, std::vector<float>>> GPT<B>::expert_biases() {
  std::vector<std::pair<std::string, std::vector<float>>> out;
  for (int l = 0; l < mc_.n_layer; l++)
    if (blocks_[l].moe && blocks_[l].moe->bias_cfg.enabled) out.push_back({expert_bias_name(l), blocks_[l].moe->expert_bias()});
  return out;
}

template <class B>
void GPT<B>::set_expert_bias(const std::string& name, const std::vector<float>& bias) {
  for (int l = 0; l < mc_.n_layer; l++)
    if (name == expert_bias_name(l) && blocks_[l].moe && blocks_[l].moe->bias_cfg.enabled)
      return blocks_[l].moe->set_expert_bias(bias);
  SCMOE_FAIL("no MoE layer with an expert bias is named by '" << name << "'");
}

template <class B>
std::vector<std::pair<int, MoeStats>> GPT<B>::moe_stats() {
  take_stats();
  return stats_;
}

}  // namespace scmoe
