// Incremental inference with a KV cache and optional expert offloading (see infer.h). Each position
// runs the stages of the training forward (gpt.cpp, block.h, moe.h) for one row, in the order of the
// overlapped schedule: a routed branch's gate runs as soon as its input (the tap) exists, its experts
// just before the block's output is summed.
#include "model/infer.h"

#include <algorithm>

#include "core/check.h"
#include "kernels/ops.h"

namespace scmoe {

Migration parse_migration(const std::string& s) {
  if (s == "blocking") return Migration::blocking;
  if (s == "async") return Migration::async;
  SCMOE_CHECK(s == "speculative",
              "inference.migration: expected async|blocking|speculative, got '" << s << "'");
  return Migration::speculative;
}

namespace {
size_t offset_of(const ParamTable& pt, const std::string& name) {
  for (const auto& s : pt.specs())
    if (s.name == name) return s.offset;
  SCMOE_FAIL("parameter '" << name << "' missing from the model");
}
}  // namespace

template <class T>
Generator<T>::Generator(GPT<T>& model, const InferenceConfig& ic)
    : model_(model),
      mc_(model.model_config()),
      L_(mc_.n_layer),
      C_(mc_.d_model),
      V_(mc_.vocab_size),
      Tn_(mc_.seq_len),
      H_(mc_.n_head),
      migration_(parse_migration(ic.migration)),
      window_(mc_.seq_len) {
  const ParamTable& pt = model.table();
  const T* params = model.params();
  wte_ = params + offset_of(pt, "wte");
  wpe_ = params + offset_of(pt, "wpe");
  lnf_.C = C_;
  lnf_.rms = mc_.norm == "rmsnorm";
  lnf_.w = model.params() + offset_of(pt, "ln_f.weight");
  if (!lnf_.rms) lnf_.b = model.params() + offset_of(pt, "ln_f.bias");

  // Where each expert's tensors are: fc.weight, fc.bias, proj.weight, proj.bias one after the other
  // (MLP::setup registers them in that order), at the same relative offsets for every expert.
  auto& blocks = model.blocks();
  expert_off_.assign(L_, {});
  bool first = true;
  for (int l = 0; l < L_; l++) {
    if (!blocks[l].moe) continue;
    const MoE<T>& moe = *blocks[l].moe;
    SCMOE_CHECK(moe.W == 1 && moe.El == moe.E,
                "generation runs in one process: build the model without a communicator");
    E_ = moe.E, k_ = moe.k, F_ = moe.F;
    for (const MLP<T>& ex : moe.experts) {
      const size_t base = ex.fc.w_off;
      const size_t fc_b = ex.fc.b_off - base, proj_w = ex.proj.w_off - base, proj_b = ex.proj.b_off - base;
      const size_t span = proj_b + size_t(C_);
      if (first) fc_b_ = fc_b, proj_w_ = proj_w, proj_b_ = proj_b, expert_span_ = span, first = false;
      SCMOE_CHECK(fc_b == fc_b_ && proj_w == proj_w_ && proj_b == proj_b_ && span == expert_span_ &&
                      ex.fc.b_off > base && ex.proj.w_off > ex.fc.b_off && ex.proj.b_off > ex.proj.w_off,
                  "expert tensors of block " << l << " are not laid out alike in the parameter buffer");
      expert_off_[l].push_back(base);
    }
  }
  // The routed branches and where their inputs come from (as gpt.cpp wired them).
  taps_ = model.branches();
  // Speculation for MoE block m (m >= 1) happens after the attention of block m-1, on its residual
  // a_{m-1}: the hidden state one block ahead. Only branches whose gate reads their own block need it:
  // a shortcut tap from block m-1 (ScMoE Pos-2/3) decides by then anyway, and a wrong guess would only
  // queue ahead of the real copy. (For block 0 there is nothing earlier than its own gate.)
  spec_at_.assign(L_, {});
  for (const BranchTap& t : taps_)
    if (t.block >= 1 && t.src == t.block) spec_at_[t.block - 1].push_back(t.block);

  arena_.begin_measure();
  alloc(arena_);
  arena_.allocate_measured();
  alloc(arena_);
  pmean_.assign(std::max(E_, 1), 0.0);
  counts_.assign(std::max(E_, 1), 0);
  for (const BranchTap& t : taps_)
    st_[t.block].moe_in = t.norm_of_input ? st_[t.block].moe_norm_out : st_[t.src].u;

  if (ic.offload_experts && !taps_.empty()) {
    const int slots = ic.expert_cache_slots;
    SCMOE_CHECK(slots >= k_ && slots <= E_, "inference.expert_cache_slots ("
                                                << slots << ") must be between moe.top_k (" << k_
                                                << ") and moe.num_experts (" << E_ << ")");
    link_ = std::make_unique<HostLink>(ic.host_link_gb_s, ic.host_link_latency_us);
    caches_.resize(L_);
    for (const BranchTap& t : taps_)
      caches_[t.block] = std::make_unique<ExpertCache<T>>(t.block, slots, params, expert_off_[t.block],
                                                          expert_span_, link_.get());
  }
}

template <class T>
Generator<T>::~Generator() = default;

template <class T>
void Generator<T>::alloc(Arena& a) {
  const size_t C = C_, TC = size_t(Tn_) * C_;
  auto& blocks = model_.blocks();
  st_.assign(L_, BlockState{});
  for (int l = 0; l < L_; l++) {
    BlockState& s = st_[l];
    const Block<T>& b = blocks[l];
    s.k_cache = a.alloc<T>(TC), s.v_cache = a.alloc<T>(TC);
    s.ln1 = a.alloc<T>(C), s.qkv = a.alloc<T>(3 * C), s.atty = a.alloc<T>(C), s.a = a.alloc<T>(C),
    s.u = a.alloc<T>(C);
    if (b.has_mlp) s.mlp_out = a.alloc<T>(C);
    if (b.combine != Combine::add) s.gate_z = a.alloc<T>(2), s.coef = a.alloc<T>(2);
    if (!b.moe) continue;
    if (b.moe_own_norm) s.moe_norm_out = a.alloc<T>(C);
    s.moe_out = a.alloc<T>(C);
    s.idx = a.alloc<int32_t>(k_), s.gate = a.alloc<T>(k_);
  }
  const size_t F = std::max({F_, mc_.d_ff, 1});
  resid_ = a.alloc<T>((L_ + 1) * C), tmp_ = a.alloc<T>(C);
  hidden_h_ = a.alloc<T>(F), hidden_g_ = a.alloc<T>(F);
  ye_ = a.alloc<T>(std::max(k_, 1) * C);
  stats_ = a.alloc<T>(2);
  glogits_ = a.alloc<T>(std::max(E_, 1)), probs_ = a.alloc<T>(std::max(E_, 1));
  att_ = a.alloc<T>(size_t(H_) * Tn_);
  spec_x_ = a.alloc<T>(C), lnf_out_ = a.alloc<T>(C), logits_ = a.alloc<T>(V_);
  pos_k_ = a.alloc<int32_t>(std::max(k_, 1)), spec_idx_ = a.alloc<int32_t>(std::max(k_, 1));
  spec_gate_ = a.alloc<T>(std::max(k_, 1));
}

template <class T>
void Generator<T>::reset() {
  window_.clear();
}

template <class T>
const T* Generator<T>::step(int32_t token) {
  SCMOE_CHECK(token >= 0 && token < V_,
              "token " << token << " outside the vocabulary (model.vocab_size " << V_ << ")");
  window_.push(token, [this](int32_t t) { forward_position(t); });
  return logits_;
}

template <class T>
void Generator<T>::norm(const Norm<T>& n, T* y, const T* x) {
  if (n.rms)
    ops::rmsnorm_forward(y, stats_ + 1, x, n.w, 1, C_);
  else
    ops::layernorm_forward(y, stats_, stats_ + 1, x, n.w, n.b, 1, C_);
}

template <class T>
void Generator<T>::forward_position(int32_t token) {
  const int p = window_.position(), C = C_;
  positions_++;
  auto& blocks = model_.blocks();
  const bool speculate_on = offloading() && migration_ == Migration::speculative;
  for (int c = 0; c < C; c++) resid_[c] = wte_[(int64_t)token * C + c] + wpe_[(int64_t)p * C + c];
  for (int l = 0; l < L_; l++) {
    T* h = resid_ + (size_t)l * C;
    BlockState& s = st_[l];
    Block<T>& b = blocks[l];
    for (const BranchTap& t : taps_)  // Pos-1 / Pos-3 taps: the normalised input of this block
      if (t.norm_of_input && t.src == l) {
        norm(blocks[t.block].moe_norm, st_[t.block].moe_norm_out, h);
        route(t.block);
      }
    norm(b.ln1, s.ln1, h);
    b.attn.qkv.forward(s.qkv, s.ln1, 1);
    ops::copy(s.k_cache + (size_t)p * C, s.qkv + C, C);
    ops::copy(s.v_cache + (size_t)p * C, s.qkv + 2 * C, C);
    ops::attention_decode(s.atty, att_, s.qkv, s.k_cache, s.v_cache, p + 1, C, H_);
    b.attn.proj.forward(tmp_, s.atty, 1);
    ops::add(s.a, h, tmp_, C);
    norm(b.ln2, s.u, s.a);
    if (speculate_on)
      for (int m : spec_at_[l]) speculate(m, s.a);
    for (const BranchTap& t : taps_)  // Pos-2 taps and standard MoE: this block's u
      if (!t.norm_of_input && t.src == l) route(t.block);
    if (b.has_mlp) {
      b.mlp.fc.forward(hidden_h_, s.u, 1);
      ops::gelu_forward(hidden_g_, hidden_h_, b.mlp.F);
      b.mlp.proj.forward(s.mlp_out, hidden_g_, 1);
    }
    if (b.combine != Combine::add) b.combine_gate.forward(s.gate_z, s.u, 1);
    if (b.moe) run_experts(l);
    block_out(l, resid_ + (size_t)(l + 1) * C);
  }
  norm(lnf_, lnf_out_, resid_ + (size_t)L_ * C);
  ops::matmul_forward(logits_, lnf_out_, wte_, (const T*)nullptr, 1, C, V_);
}

// The gate of block m's routed branch on its input; with async migration the copies start now.
template <class T>
void Generator<T>::route(int m) {
  BlockState& s = st_[m];
  const MoE<T>& moe = *model_.blocks()[m].moe;
  moe.gate.forward(glogits_, s.moe_in, 1);
  ops::router_forward(glogits_, 1, E_, k_, moe.renormalize, probs_, s.idx, s.gate, pmean_.data(),
                      counts_.data());
  if (caches_.empty() || migration_ == Migration::blocking) return;
  for (int j = 0; j < k_; j++) caches_[m]->request(s.idx[j]);
}

// Predicts block m's experts from the residual stream h (its LN2 and gate, as if h were its input)
// and prefetches them.
template <class T>
void Generator<T>::speculate(int m, const T* h) {
  const Block<T>& b = model_.blocks()[m];
  norm(b.ln2, spec_x_, h);
  b.moe->gate.forward(glogits_, spec_x_, 1);
  ops::router_forward(glogits_, 1, E_, k_, b.moe->renormalize, probs_, spec_idx_, spec_gate_, pmean_.data(),
                      counts_.data());
  for (int j = 0; j < k_; j++) caches_[m]->request(spec_idx_[j], true);
}

// moe_out of block m: its experts on the routed input, summed with the gate values as the
// dispatcher's combine does.
template <class T>
void Generator<T>::run_experts(int m) {
  BlockState& s = st_[m];
  ExpertCache<T>* cache = caches_.empty() ? nullptr : caches_[m].get();
  if (cache)  // no-ops for experts already requested at the gate
    for (int j = 0; j < k_; j++) cache->request(s.idx[j]);
  for (int j = 0; j < k_; j++) {
    const int e = s.idx[j];
    const T* w = cache ? cache->acquire(e) : model_.params() + expert_off_[m][e];
    ops::matmul_forward(hidden_h_, s.moe_in, w, w + fc_b_, 1, C_, F_);
    ops::gelu_forward(hidden_g_, hidden_h_, F_);
    ops::matmul_forward(ye_ + (size_t)j * C_, hidden_g_, w + proj_w_, w + proj_b_, 1, F_, C_);
    pos_k_[j] = j;
  }
  ops::combine_forward(s.moe_out, ye_, s.gate, pos_k_, 1, k_, C_);
  if (cache) cache->release();
}

// Block::forward_out for one row.
template <class T>
void Generator<T>::block_out(int l, T* out) {
  const BlockState& s = st_[l];
  const Block<T>& b = model_.blocks()[l];
  ops::copy(out, s.a, C_);
  if (b.combine == Combine::cg1) {
    ops::cg1_forward(tmp_, s.coef, s.gate_z, s.mlp_out, 1, C_);
    ops::add_inplace(out, tmp_, C_);
  } else if (b.combine == Combine::cg2) {
    ops::cg2_forward(tmp_, s.coef, s.gate_z, s.mlp_out, s.moe_out, 1, C_);
    ops::add_inplace(out, tmp_, C_);
    return;
  } else if (b.has_mlp) {
    ops::add_inplace(out, s.mlp_out, C_);
  }
  if (b.moe) ops::add_inplace(out, s.moe_out, C_);
}

template <class T>
DeviceMemory Generator<T>::device_memory() const {
  DeviceMemory m;
  // The parameter buffer as laid out (tensors padded for alignment): what a device would hold.
  const auto& specs = model_.table().specs();
  for (size_t i = 0; i < specs.size(); i++) {
    const size_t end = i + 1 < specs.size() ? specs[i + 1].offset : model_.table().total();
    (specs[i].expert ? m.expert_params : m.other_params) += (end - specs[i].offset) * sizeof(T);
  }
  m.expert_cache = slot_bytes_of(caches_);
  m.kv_cache = size_t(L_) * 2 * Tn_ * C_ * sizeof(T);
  m.activations = arena_.bytes() - m.kv_cache;
  return m;
}

template <class T>
const ExpertCache<T>* Generator<T>::cache(int layer) const {
  return caches_.empty() ? nullptr : caches_.at(layer).get();
}

template class Generator<float>;
template class Generator<double>;

}  // namespace scmoe
