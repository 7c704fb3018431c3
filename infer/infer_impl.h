// Generator<B>'s member definitions (see infer.h), for the translation units that instantiate it:
// infer.cpp (the CPU backend) and infer/cuda_infer.cu (the CUDA backend). Each position runs the
// stages of the training forward for one row, in the order of the overlapped schedule: a routed
// branch's gate runs as soon as its input (the tap) exists, its experts just before the block's output
// is summed.
#pragma once
#include <algorithm>
#include <numeric>

#include "core/check.h"
#include "infer/expert_cache_impl.h"
#include "infer/infer.h"

namespace scmoe {

template <class B>
Generator<B>::Generator(const Config& cfg, const G* params)
    : model_(cfg, 0, nullptr, model_options(cfg)),
      k_(model_.kernels()),
      mc_(cfg.model),
      L_(mc_.n_layer),
      C_(mc_.d_model),
      V_(mc_.vocab_size),
      Tn_(mc_.seq_len),
      H_(mc_.n_head),
      migration_(parse_migration(cfg.inference.migration)),
      window_(mc_.seq_len) {
  model_.set_params(params);
  const Architecture& ar = model_.arch();
  E_ = ar.E, k_choices_ = ar.k, F_ = ar.Fe;
  // The routed branches and where their inputs come from; an expert's tensors relative to its start.
  for (int l = 0; l < L_; l++) {
    const BlockArch& b = ar.blocks[l];
    if (!b.moe) continue;
    BranchTap t;
    t.block = l, t.norm_of_input = b.tap == TapKind::norm_of_input, t.src = b.src;
    taps_.push_back(t);
    const MlpParams& f = b.experts.first;
    fc_b_ = f.fc.b.offset - f.fc.w.offset, proj_w_ = f.proj.w.offset - f.fc.w.offset;
    proj_b_ = f.proj.b.offset - f.fc.w.offset;
  }
  // Speculation for MoE block m (m >= 1) happens after the attention of block m-1, on its residual
  // a_{m-1}: the hidden state one block ahead. Only branches whose gate reads their own block need it:
  // a shortcut tap from block m-1 (ScMoE Pos-2/3) decides by then anyway, and a wrong guess would only
  // queue ahead of the real copy. (For block 0 there is nothing earlier than its own gate.)
  spec_at_.assign(L_, {});
  for (const BranchTap& t : taps_)
    if (t.block >= 1 && t.src == t.block) spec_at_[t.block - 1].push_back(t.block);

  arena_.begin_measure();
  alloc(arena_);
  arena_mem_ = typename B::template Array<char>(arena_.bytes(), "the KV cache and activations");
  arena_.place_measured(arena_mem_.get());
  alloc(arena_);
  for (const BranchTap& t : taps_) {
    st_[t.block].moe_in = t.norm_of_input ? st_[t.block].moe_norm_out : st_[t.src].u;
    st_[t.block].chosen.assign(k_choices_, 0);
  }
  if (k_choices_ > 0) {
    std::vector<int32_t> iota(k_choices_);
    std::iota(iota.begin(), iota.end(), 0);
    k_.upload(pos_k_, iota.data(), iota.size());
  }
  host_logits_.resize(V_);

  if (!model_.host_experts() || taps_.empty()) return;
  const int slots = cfg.inference.expert_cache_slots;
  SCMOE_CHECK(slots >= k_choices_ && slots <= E_, "inference.expert_cache_slots ("
                                                      << slots << ") must be between moe.top_k (" << k_choices_
                                                      << ") and moe.num_experts (" << E_ << ")");
  link_ = k_.make_expert_link(cfg.inference.host_link_gb_s, cfg.inference.host_link_latency_us);
  caches_.resize(L_);
  for (const BranchTap& t : taps_)
    caches_[t.block] = std::make_unique<ExpertCache<T>>(t.block, slots, model_.host_experts(),
                                                        model_.expert_offsets()[t.block],
                                                        ar.blocks[t.block].experts.span, link_.get());
}

template <class B>
Generator<B>::~Generator() {
  caches_.clear();  // their slots and events go before the link
  link_.reset();
}

template <class B>
void Generator<B>::alloc(Arena& a) {
  const size_t C = C_, TC = size_t(Tn_) * C_;
  const int K = std::max(k_choices_, 1), E = std::max(E_, 1);
  auto& blocks = model_.blocks();
  st_.assign(L_, BlockState{});
  for (int l = 0; l < L_; l++) {
    BlockState& s = st_[l];
    s.k_cache = a.alloc<T>(TC), s.v_cache = a.alloc<T>(TC);
  }
  for (int l = 0; l < L_; l++) {
    BlockState& s = st_[l];
    const Block<B>& b = blocks[l];
    s.ln1 = a.alloc<T>(C), s.qkv = a.alloc<T>(3 * C), s.atty = a.alloc<T>(C), s.a = a.alloc<T>(C);
    s.u = a.alloc<T>(C);
    if (b.has_mlp) s.mlp_out = a.alloc<T>(C);
    if (b.combine != Combine::add) s.gate_z = a.alloc<T>(2), s.coef = a.alloc<S>(2);
    if (!b.moe) continue;
    if (b.tap == TapKind::norm_of_input) s.moe_norm_out = a.alloc<T>(C);
    s.moe_out = a.alloc<T>(C);
    s.idx = a.alloc<int32_t>(K), s.gate = a.alloc<S>(K);
  }
  const size_t F = std::max({F_, mc_.d_ff, 1});
  resid_ = a.alloc<T>((L_ + 1) * C), tmp_ = a.alloc<T>(C);
  hidden_h_ = a.alloc<T>(F), hidden_g_ = a.alloc<T>(F);
  ye_ = a.alloc<T>(K * C);
  stats_ = a.alloc<S>(2), att_ = a.alloc<S>(size_t(H_) * Tn_);
  glogits_ = a.alloc<T>(E), probs_ = a.alloc<S>(E), pmean_ = a.alloc<Acc>(E), counts_ = a.alloc<int64_t>(E);
  losses_ = a.alloc<Acc>(3);
  spec_x_ = a.alloc<T>(C), lnf_out_ = a.alloc<T>(C), logits_ = a.alloc<T>(V_);
  pos_k_ = a.alloc<int32_t>(K), spec_idx_ = a.alloc<int32_t>(K);
  spec_gate_ = a.alloc<S>(K);
}

template <class B>
void Generator<B>::reset() {
  window_.clear();
}

template <class B>
void Generator<B>::finish() {
  k_.synchronize();
  if (!link_) return;
  link_->synchronize();
  link_->settle();
}

template <class B>
const typename Generator<B>::Host* Generator<B>::step(int32_t token) {
  SCMOE_CHECK(token >= 0 && token < V_,
              "token " << token << " outside the vocabulary (model.vocab_size " << V_ << ")");
  window_.push(token, [this](int32_t t) { forward_position(t); });
  const Host* logits = k_.host_view(logits_, V_, host_logits_);
  if (link_) link_->settle();
  return logits;
}

template <class B>
void Generator<B>::norm(const Norm<B>& n, T* y, const T* x) {
  k_.norm_forward(y, stats_, stats_ + 1, x, n.w, n.b, 1, C_, n.rms);
}

template <class B>
void Generator<B>::forward_position(int32_t token) {
  const int p = window_.position(), C = C_;
  positions_++;
  auto& blocks = model_.blocks();
  const bool speculate_on = offloading() && migration_ == Migration::speculative;
  const T* w = model_.weights();
  const Architecture& ar = model_.arch();
  // The embedding: one row of wte plus one of wpe (encoder_forward for one position).
  k_.add(resid_, w + ar.wte.offset + int64_t(token) * C, w + ar.wpe.offset + int64_t(p) * C, C);
  for (int l = 0; l < L_; l++) {
    T* h = resid_ + (size_t)l * C;
    BlockState& s = st_[l];
    Block<B>& b = blocks[l];
    for (const BranchTap& t : taps_)  // Pos-1 / Pos-3 taps: the normalised input of this block
      if (t.norm_of_input && t.src == l) {
        norm(blocks[t.block].moe_norm, st_[t.block].moe_norm_out, h);
        route(t.block);
      }
    norm(b.ln1, s.ln1, h);
    b.attn.qkv.forward(s.qkv, s.ln1, 1);
    k_.copy(s.k_cache + (size_t)p * C, s.qkv + C, C);
    k_.copy(s.v_cache + (size_t)p * C, s.qkv + 2 * C, C);
    k_.attention_decode(s.atty, att_, s.qkv, s.k_cache, s.v_cache, p + 1, C, H_);
    b.attn.proj.forward(tmp_, s.atty, 1);
    k_.add(s.a, h, tmp_, C);
    norm(b.ln2, s.u, s.a);
    if (speculate_on)
      for (int m : spec_at_[l]) speculate(m, s.a);
    for (const BranchTap& t : taps_)  // Pos-2 taps and standard MoE: this block's u
      if (!t.norm_of_input && t.src == l) route(t.block);
    if (b.has_mlp) {
      b.mlp.fc.forward(hidden_h_, s.u, 1);
      k_.gelu_forward(hidden_g_, hidden_h_, b.mlp.F);
      b.mlp.proj.forward(s.mlp_out, hidden_g_, 1);
    }
    if (b.combine != Combine::add) b.combine_gate.forward(s.gate_z, s.u, 1);
    if (b.moe) run_experts(l);
    block_output(k_, b.combine, b.has_mlp, b.moe != nullptr, resid_ + (size_t)(l + 1) * C, s.a, s.mlp_out,
                 s.moe_out, s.gate_z, s.coef, tmp_, 1, C);
  }
  norm(model_.final_norm(), lnf_out_, resid_ + (size_t)L_ * C);
  k_.matmul_forward(logits_, lnf_out_, w + ar.wte.offset, (const T*)nullptr, 1, C, V_);
}

// The training router's choice for one token (scores, expert bias, renormalisation as trained): no
// sequence statistics.
inline RouterSpec one_token(RouterSpec r) {
  r.seq_len = 0;
  return r;
}

// The gate of block m's routed branch on its input. The host learns the chosen experts; with async
// migration their copies start now, while the backbone goes on.
template <class B>
void Generator<B>::route(int m) {
  BlockState& s = st_[m];
  const MoE<B>& moe = *model_.blocks()[m].moe;
  moe.gate.forward(glogits_, s.moe_in, 1);
  k_.router_forward(glogits_, 1, one_token(moe.spec), probs_, s.idx, s.gate, pmean_, counts_, nullptr, losses_);
  k_.download(s.chosen.data(), s.idx, size_t(k_choices_));
  if (caches_.empty() || migration_ == Migration::blocking) return;
  for (int32_t e : s.chosen) caches_[m]->request(e);
}

// Predicts block m's experts from the residual stream h (its LN2 and gate, as if h were its input)
// and prefetches them.
template <class B>
void Generator<B>::speculate(int m, const T* h) {
  const Block<B>& b = model_.blocks()[m];
  norm(b.ln2, spec_x_, h);
  b.moe->gate.forward(glogits_, spec_x_, 1);
  k_.router_forward(glogits_, 1, one_token(b.moe->spec), probs_, spec_idx_, spec_gate_, pmean_, counts_, nullptr,
                    losses_);
  std::vector<int32_t> guess(k_choices_);
  k_.download(guess.data(), spec_idx_, guess.size());
  for (int32_t e : guess) caches_[m]->request(e, true);
}

template <class B>
const typename B::T* Generator<B>::expert_weights(int m, int e) {
  if (!caches_.empty()) return caches_[m]->acquire(e);  // the compute stream waits for its copy here
  const ExpertParams& ex = model_.arch().blocks[m].experts;
  return model_.weights() + ex.first.fc.w.offset + size_t(e) * ex.stride;
}

// moe_out of block m: its experts on the routed input, summed with the gate values as the
// dispatcher's combine does.
template <class B>
void Generator<B>::run_experts(int m) {
  BlockState& s = st_[m];
  ExpertCache<T>* cache = caches_.empty() ? nullptr : caches_[m].get();
  if (cache)  // no-ops for experts already requested at the gate
    for (int32_t e : s.chosen) cache->request(e);
  for (int j = 0; j < k_choices_; j++) {
    const T* w = expert_weights(m, s.chosen[j]);
    k_.matmul_forward(hidden_h_, s.moe_in, w, w + fc_b_, 1, C_, F_);
    k_.gelu_forward(hidden_g_, hidden_h_, F_);
    k_.matmul_forward(ye_ + (size_t)j * C_, hidden_g_, w + proj_w_, w + proj_b_, 1, F_, C_);
  }
  k_.combine_forward(s.moe_out, ye_, s.gate, pos_k_, 1, k_choices_, C_);
  if (cache) cache->release();
}

template <class B>
DeviceMemory Generator<B>::device_memory() const {
  DeviceMemory m;
  // The parameter buffer as laid out (tensors padded for alignment): what the device holds resident.
  const ParamTable& t = model_.table();
  const auto& specs = t.specs();
  for (size_t i = 0; i < specs.size(); i++) {
    const size_t end = i + 1 < specs.size() ? specs[i + 1].offset : t.total();
    (specs[i].expert ? m.expert_params : m.other_params) += (end - specs[i].offset) * sizeof(T);
  }
  m.expert_cache = slot_bytes_of(caches_);
  m.kv_cache = size_t(L_) * 2 * Tn_ * C_ * sizeof(T);
  m.activations = arena_.bytes() - m.kv_cache;
  return m;
}

template <class B>
const ExpertCache<typename B::T>* Generator<B>::cache(int layer) const {
  return caches_.empty() ? nullptr : caches_.at(layer).get();
}

}  // namespace scmoe
