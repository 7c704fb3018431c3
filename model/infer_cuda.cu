// Generation on the CUDA backend (see infer_cuda.h): Generator<T> of model/infer.cpp with each stage a
// kernel of kernels/cuda/ on one row.
#include "model/infer_cuda.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device_memory.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gates.h"
#include "kernels/cuda/gelu.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/norm.h"
#include "kernels/cuda/permute.h"
#include "kernels/cuda/router.h"
#include "model/expert_cache_impl.h"
#include "model/block_layout.h"
#include "model/expert_link_cuda.h"

SCMOE_CUDA_BEGIN


namespace {

const ParamSpec& spec_of(const ParamTable& t, const std::string& name) {
  for (const auto& s : t.specs())
    if (s.name == name) return s;
  SCMOE_FAIL("parameter table has no tensor '" << name << "'");
}

// Rows of 256-byte aligned pieces of one allocation: measured in a first pass, handed out in a second.
struct Carver {
  char* base = nullptr;
  size_t used = 0;
  template <class U>
  U* take(size_t n) {
    const size_t off = used;
    used += (n * sizeof(U) + 255) / 256 * 256;
    return base ? reinterpret_cast<U*>(base + off) : nullptr;
  }
};

// Synchronous copies run on the legacy default stream; finish ours first (stream_ is that stream
// today, so this guards a generator given a stream of its own).
void sync(cudaStream_t stream) {
#if defined(SCMOE_SIMT_EMU)
  (void)stream;
#else
  SCMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
#endif
}

}  // namespace

template <class T>
struct GeneratorCuda<T>::Layer {
  // device offsets of the parameters (fc/fcp: the dense MLP or the shared expert)
  size_t ln1_w = 0, ln1_b = 0, qkv_w = 0, qkv_b = 0, proj_w = 0, proj_b = 0, ln2_w = 0, ln2_b = 0;
  size_t fc_w = 0, fc_b = 0, fcp_w = 0, fcp_b = 0, comb_w = 0, mn_w = 0, mn_b = 0, gate_w = 0;
  bool has_mlp = true, moe = false, own_norm = false;
  int F = 0, src = -1;
  CombineKind combine = CombineKind::add;
  std::vector<int> norm_taps, u_taps;  // MoE blocks whose routed branch reads this block's input / u
  // Where expert e starts: in params_ when resident, in host_experts_ when offloaded.
  std::vector<size_t> expert;
  T *k_cache = nullptr, *v_cache = nullptr;  // [seq_len, C]
  T *ln1 = nullptr, *qkv = nullptr, *atty = nullptr, *a = nullptr, *u = nullptr, *mlp_out = nullptr;
  T *gate_z = nullptr, *moe_norm_out = nullptr, *moe_out = nullptr;
  float* gate_coef = nullptr;
  const T* moe_in = nullptr;
  int32_t* idx = nullptr;  // [k] chosen experts of the last position
  float* gate = nullptr;   // [k] their gate values
  std::vector<int32_t> chosen;  // host copy of idx
};

template <class T>
GeneratorCuda<T>::GeneratorCuda(const Config& cfg, const ParamTable& table, const float* params)
    : L_(cfg.model.n_layer), C_(cfg.model.d_model), V_(cfg.model.vocab_size), Tn_(cfg.model.seq_len),
      H_(cfg.model.n_head), F_(cfg.model.d_ff), rms_(cfg.model.norm == "rmsnorm"),
      migration_(parse_migration(cfg.inference.migration)),
      window_(cfg.model.seq_len) {
  const ModelLayout ml = model_layout(cfg);  // as GPT<T>'s constructor built `table`
  E_ = ml.E, k_ = ml.k, Fe_ = ml.Fe;
  renormalize_ = cfg.moe.renormalize;
  SCMOE_CHECK(E_ <= 256, "the CUDA router takes at most 256 experts, moe.num_experts is " << E_);
  const bool offload = cfg.inference.offload_experts && E_ > 0;
  if (offload)
    SCMOE_CHECK(cfg.inference.expert_cache_slots >= k_ && cfg.inference.expert_cache_slots <= E_,
                "inference.expert_cache_slots (" << cfg.inference.expert_cache_slots << ") must be between moe.top_k ("
                                                 << k_ << ") and moe.num_experts (" << E_ << ")");

  // Device layout: the table's, with the routed experts left out when they are offloaded. Host store
  // (offloading): each expert's tensors, 256-byte aligned, in table order.
  const auto& specs = table.specs();
  std::vector<size_t> dev(specs.size()), host(specs.size());
  size_t dev_total = 0, host_total = 0;
  // Each routed expert starts 256-byte aligned in either place, as a cache slot does, so that its
  // matmuls see the same alignment (and cuBLASLt the same algorithms) resident or offloaded.
  auto align = [](size_t n) { return (n * sizeof(T) + 255) / 256 * 256 / sizeof(T); };
  for (size_t i = 0; i < specs.size(); i++) {
    const size_t len = (i + 1 < specs.size() ? specs[i + 1].offset : table.total()) - specs[i].offset;
    const std::string& name = specs[i].name;
    const bool starts_expert =
        specs[i].expert && name.size() >= 10 && name.compare(name.size() - 10, 10, ".fc.weight") == 0;
    if (offload && specs[i].expert) {
      if (starts_expert) host_total = align(host_total);
      host[i] = host_total, host_total += len;
    } else {
      if (starts_expert) dev_total = align(dev_total);
      dev[i] = dev_total, dev_total += len;
    }
    (specs[i].expert ? mem_.expert_params : mem_.other_params) += len * sizeof(T);
  }
  auto index = [&](const std::string& name) { return size_t(&spec_of(table, name) - specs.data()); };
  auto off = [&](const std::string& name) { return dev[index(name)]; };

  wte_ = off("wte"), wpe_ = off("wpe"), lnf_w_ = off("ln_f.weight");
  if (!rms_) lnf_b_ = off("ln_f.bias");
  layers_.resize(L_);
  bool first_expert = true;
  for (int l = 0; l < L_; l++) {
    const std::string p = "blocks." + std::to_string(l);
    Layer& Ly = layers_[l];
    Ly.ln1_w = off(p + ".ln1.weight"), Ly.ln2_w = off(p + ".ln2.weight");
    if (!rms_) Ly.ln1_b = off(p + ".ln1.bias"), Ly.ln2_b = off(p + ".ln2.bias");
    Ly.qkv_w = off(p + ".attn.qkv.weight"), Ly.qkv_b = off(p + ".attn.qkv.bias");
    Ly.proj_w = off(p + ".attn.proj.weight"), Ly.proj_b = off(p + ".attn.proj.bias");
    const BlockLayout& bl = ml.blocks[l];
    Ly.moe = bl.moe, Ly.F = bl.F, Ly.has_mlp = bl.has_mlp;
    const std::string mlp = p + (Ly.moe ? ".shared_expert" : ".mlp");
    if (Ly.has_mlp) {
      Ly.fc_w = off(mlp + ".fc.weight"), Ly.fc_b = off(mlp + ".fc.bias");
      Ly.fcp_w = off(mlp + ".proj.weight"), Ly.fcp_b = off(mlp + ".proj.bias");
    }
    if (!Ly.moe) continue;
    Ly.combine = bl.combine, Ly.own_norm = bl.own_norm, Ly.src = bl.src;
    if (Ly.combine != CombineKind::add) Ly.comb_w = off(p + ".combine.weight");
    if (Ly.own_norm) {
      Ly.mn_w = off(p + ".moe.norm.weight");
      if (!rms_) Ly.mn_b = off(p + ".moe.norm.bias");
      layers_[Ly.src].norm_taps.push_back(l);
    } else {
      layers_[Ly.src].u_taps.push_back(l);
    }
    Ly.gate_w = off(p + ".moe.gate.weight");
    for (int e = 0; e < E_; e++) {
      const std::string x = p + ".moe.experts." + std::to_string(e);
      const ParamSpec &fw = spec_of(table, x + ".fc.weight"), &fb = spec_of(table, x + ".fc.bias");
      const ParamSpec &pw = spec_of(table, x + ".proj.weight"), &pb = spec_of(table, x + ".proj.bias");
      // The expert's tensors follow each other (MLP::setup's order) at the same relative offsets.
      const size_t fcb = fb.offset - fw.offset, pjw = pw.offset - fw.offset, pjb = pb.offset - fw.offset;
      if (first_expert) fc_b_ = fcb, proj_w_ = pjw, proj_b_ = pjb, expert_span_ = pjb + size_t(C_);
      first_expert = false;
      SCMOE_CHECK(fcb == fc_b_ && pjw == proj_w_ && pjb == proj_b_ && fw.offset < fb.offset &&
                      fb.offset < pw.offset && pw.offset < pb.offset,
                  "expert tensors of block " << l << " are not laid out alike in the parameter table");
      Ly.expert.push_back(offload ? host[index(x + ".fc.weight")] : dev[index(x + ".fc.weight")]);
    }
  }
  // Speculation for MoE block m happens after the attention of block m-1 (see infer.h), only for
  // branches whose gate reads their own block.
  spec_at_.assign(L_, {});
  for (int l = 0; l < L_; l++)
    if (layers_[l].moe && l >= 1 && layers_[l].src == l) spec_at_[l - 1].push_back(l);

  // Weights: T on the device (and in the pinned store), rounded to nearest from the fp32 values.
  auto convert = [&](T* dst, size_t i, size_t at) {
    const size_t len = (i + 1 < specs.size() ? specs[i + 1].offset : table.total()) - specs[i].offset;
    const float* s = params + specs[i].offset;
    for (size_t j = 0; j < len; j++) dst[at + j] = from_f32<T>(s[j]);
  };
  params_store_ = DeviceArray<T>(dev_total, "parameters");
  params_ = params_store_.get();
  {
    std::vector<T> staged(dev_total);
    for (size_t i = 0; i < specs.size(); i++)
      if (!(offload && specs[i].expert)) convert(staged.data(), i, dev[i]);
    copy_to_device(params_, staged.data(), dev_total * sizeof(T), "parameters");
  }
  if (offload) {
    host_experts_.reset(static_cast<T*>(host_pinned_alloc(host_total * sizeof(T), "the routed experts")));
    for (size_t i = 0; i < specs.size(); i++)
      if (specs[i].expert) convert(host_experts_.get(), i, host[i]);
  }

  // KV caches and activations, measured then allocated.
  auto carve = [&](Carver& a) {
    const size_t C = C_, TC = size_t(Tn_) * C_;
    for (Layer& Ly : layers_) {
      Ly.k_cache = a.take<T>(TC), Ly.v_cache = a.take<T>(TC);
    }
    mem_.kv_cache = a.used;
    for (Layer& Ly : layers_) {
      Ly.ln1 = a.take<T>(C), Ly.qkv = a.take<T>(3 * C), Ly.atty = a.take<T>(C), Ly.a = a.take<T>(C);
      Ly.u = a.take<T>(C);
      if (Ly.has_mlp) Ly.mlp_out = a.take<T>(C);
      if (!Ly.moe) continue;
      if (Ly.combine != CombineKind::add) Ly.gate_z = a.take<T>(2), Ly.gate_coef = a.take<float>(2);
      if (Ly.own_norm) Ly.moe_norm_out = a.take<T>(C);
      Ly.moe_out = a.take<T>(C);
      Ly.idx = a.take<int32_t>(k_), Ly.gate = a.take<float>(k_);
    }
    const int K = std::max(k_, 1), E = std::max(E_, 1);
    const size_t F = std::max({F_, Fe_, 1});
    resid_ = a.take<T>(size_t(L_ + 1) * C), tmp_ = a.take<T>(C);
    hidden_h_ = a.take<T>(F), hidden_g_ = a.take<T>(F), ye_ = a.take<T>(size_t(K) * C);
    stats_ = a.take<float>(2), att_ = a.take<float>(size_t(H_) * Tn_);
    glogits_ = a.take<T>(E), probs_ = a.take<float>(E), pmean_ = a.take<float>(E), counts_ = a.take<int64_t>(E);
    losses_ = a.take<float>(2), spec_x_ = a.take<T>(C), spec_idx_ = a.take<int32_t>(K);
    spec_gate_ = a.take<float>(K), pos_k_ = a.take<int32_t>(K);
    lnf_out_ = a.take<T>(C), logits_ = a.take<T>(V_);
    workspace_ = E_ > 0 ? a.take<char>(router_forward_workspace_bytes(1, E_)) : nullptr;
  };
  Carver measure;
  carve(measure);
  mem_.activations = measure.used - mem_.kv_cache;
  arena_ = DeviceArray<char>(measure.used, "the KV cache and activations");
  Carver real{arena_.get(), 0};
  carve(real);
  for (Layer& Ly : layers_) {
    if (!Ly.moe) continue;
    Ly.moe_in = Ly.own_norm ? Ly.moe_norm_out : layers_[Ly.src].u;
    Ly.chosen.assign(k_, 0);
  }
  if (k_ > 0) {
    std::vector<int32_t> iota(k_);
    for (int j = 0; j < k_; j++) iota[j] = j;
    copy_to_device(pos_k_, iota.data(), k_ * sizeof(int32_t), "combine positions");
  }
  host_logits_.resize(V_), host_logits_t_.resize(V_);

  if (offload) {
#if defined(SCMOE_SIMT_EMU)
    link_ = std::make_unique<HostLink>(cfg.inference.host_link_gb_s, cfg.inference.host_link_latency_us);
#else
    link_ = make_cuda_expert_link(stream_);
#endif
    caches_.resize(L_);
    for (int l = 0; l < L_; l++)
      if (layers_[l].moe)
        caches_[l] = std::make_unique<ExpertCache<T>>(l, cfg.inference.expert_cache_slots, host_experts_.get(),
                                                      layers_[l].expert, expert_span_, link_.get());
    mem_.expert_cache = slot_bytes_of(caches_);
  }
}

template <class T>
GeneratorCuda<T>::~GeneratorCuda() {
  caches_.clear();  // their slots and events go before the link
  link_.reset();
}  // then the pinned experts, the arena and the parameters (members, in reverse order)

template <class T>
void GeneratorCuda<T>::PinnedFree::operator()(T* p) const {
  host_pinned_free(p);
}

template <class T>
void GeneratorCuda<T>::finish() {
  sync(stream_);
  if (!link_) return;
  link_->synchronize();
  link_->settle();
}

template <class T>
const float* GeneratorCuda<T>::step(int32_t token) {
  SCMOE_CHECK(token >= 0 && token < V_, "token " << token << " outside the vocabulary (model.vocab_size " << V_ << ")");
  window_.push(token, [this](int32_t t) { forward_position(t); });
  sync(stream_);
  copy_to_host(host_logits_t_.data(), logits_, size_t(V_) * sizeof(T), "logits");
  for (int i = 0; i < V_; i++) host_logits_[i] = to_f32(host_logits_t_[i]);
  if (link_) link_->settle();
  return host_logits_.data();
}

template <class T>
void GeneratorCuda<T>::norm(T* y, const T* x, size_t w, size_t b) {
  if (rms_) rmsnorm_forward(y, stats_ + 1, x, params_ + w, 1, C_, stream_);
  else layernorm_forward(y, stats_, stats_ + 1, x, params_ + w, params_ + b, 1, C_, stream_);
}

template <class T>
void GeneratorCuda<T>::forward_position(int32_t token) {
  const int p = window_.position(), C = C_;
  positions_++;
  const bool speculate_on = offloading() && migration_ == Migration::speculative;
  // The embedding: one row of wte plus one of wpe (encoder_forward without uploading the token).
  add(resid_, params_ + wte_ + int64_t(token) * C, params_ + wpe_ + int64_t(p) * C, C, stream_);
  for (int l = 0; l < L_; l++) {
    Layer& Ly = layers_[l];
    const T* h = resid_ + size_t(l) * C;
    for (int m : Ly.norm_taps) {  // Pos-1 / Pos-3: the normalised input of this block
      norm(layers_[m].moe_norm_out, h, layers_[m].mn_w, layers_[m].mn_b);
      route(m);
    }
    norm(Ly.ln1, h, Ly.ln1_w, Ly.ln1_b);
    matmul_forward(Ly.qkv, Ly.ln1, params_ + Ly.qkv_w, params_ + Ly.qkv_b, 1, C, 3 * C, stream_);
    copy(Ly.k_cache + size_t(p) * C, Ly.qkv + C, C, stream_);
    copy(Ly.v_cache + size_t(p) * C, Ly.qkv + 2 * C, C, stream_);
    attention_decode(Ly.atty, att_, Ly.qkv, Ly.k_cache, Ly.v_cache, p + 1, C, H_, stream_);
    matmul_forward(tmp_, Ly.atty, params_ + Ly.proj_w, params_ + Ly.proj_b, 1, C, C, stream_);
    add(Ly.a, h, tmp_, C, stream_);
    norm(Ly.u, Ly.a, Ly.ln2_w, Ly.ln2_b);
    if (speculate_on)
      for (int m : spec_at_[l]) speculate(m, Ly.a);
    for (int m : Ly.u_taps) route(m);  // Pos-2 and standard MoE: this block's u
    if (Ly.has_mlp) {
      matmul_forward(hidden_h_, Ly.u, params_ + Ly.fc_w, params_ + Ly.fc_b, 1, C, Ly.F, stream_);
      gelu_forward(hidden_g_, hidden_h_, Ly.F, stream_);
      matmul_forward(Ly.mlp_out, hidden_g_, params_ + Ly.fcp_w, params_ + Ly.fcp_b, 1, Ly.F, C, stream_);
    }
    if (Ly.combine != CombineKind::add)
      matmul_forward(Ly.gate_z, Ly.u, params_ + Ly.comb_w, (const T*)nullptr, 1, C,
                     Ly.combine == CombineKind::cg1 ? 1 : 2, stream_);
    if (Ly.moe) run_experts(l);
    block_out(l, resid_ + size_t(l + 1) * C);
  }
  const T* xf = resid_ + size_t(L_) * C;
  norm(lnf_out_, xf, lnf_w_, lnf_b_);
  matmul_forward(logits_, lnf_out_, params_ + wte_, (const T*)nullptr, 1, C, V_, stream_);
}

// The gate of block m's routed branch on its input. The host learns the chosen experts (one small
// synchronisation); with async migration their copies start now, while the backbone goes on.
template <class T>
void GeneratorCuda<T>::route(int m) {
  Layer& Ly = layers_[m];
  matmul_forward(glogits_, Ly.moe_in, params_ + Ly.gate_w, (const T*)nullptr, 1, C_, E_, stream_);
  router_forward(glogits_, 1, E_, k_, renormalize_, probs_, Ly.idx, Ly.gate, pmean_, counts_, losses_, workspace_,
                 stream_);
  sync(stream_);
  copy_to_host(Ly.chosen.data(), Ly.idx, size_t(k_) * sizeof(int32_t), "chosen experts");
  if (caches_.empty() || migration_ == Migration::blocking) return;
  for (int j = 0; j < k_; j++) caches_[m]->request(Ly.chosen[j]);
}

// Predicts block m's experts from the residual stream a (its LN2 and gate, as if a were its input)
// and prefetches them.
template <class T>
void GeneratorCuda<T>::speculate(int m, const T* a) {
  const Layer& Ly = layers_[m];
  norm(spec_x_, a, Ly.ln2_w, Ly.ln2_b);
  matmul_forward(glogits_, spec_x_, params_ + Ly.gate_w, (const T*)nullptr, 1, C_, E_, stream_);
  router_forward(glogits_, 1, E_, k_, renormalize_, probs_, spec_idx_, spec_gate_, pmean_, counts_, losses_,
                 workspace_, stream_);
  sync(stream_);
  std::vector<int32_t> guess(k_);
  copy_to_host(guess.data(), spec_idx_, size_t(k_) * sizeof(int32_t), "predicted experts");
  for (int32_t e : guess) caches_[m]->request(e, true);
}

template <class T>
const T* GeneratorCuda<T>::expert_weights(int m, int e) {
  if (!caches_.empty()) return caches_[m]->acquire(e);  // the compute stream waits for its copy here
  return params_ + layers_[m].expert[e];
}

// moe_out of block m: its experts on the routed input, summed with the gate values.
template <class T>
void GeneratorCuda<T>::run_experts(int m) {
  Layer& Ly = layers_[m];
  ExpertCache<T>* cache = caches_.empty() ? nullptr : caches_[m].get();
  if (cache)  // no-ops for experts already requested at the gate
    for (int j = 0; j < k_; j++) cache->request(Ly.chosen[j]);
  for (int j = 0; j < k_; j++) {
    const T* w = expert_weights(m, Ly.chosen[j]);
    matmul_forward(hidden_h_, Ly.moe_in, w, w + fc_b_, 1, C_, Fe_, stream_);
    gelu_forward(hidden_g_, hidden_h_, Fe_, stream_);
    matmul_forward(ye_ + size_t(j) * C_, hidden_g_, w + proj_w_, w + proj_b_, 1, Fe_, C_, stream_);
  }
  combine_forward(Ly.moe_out, ye_, Ly.gate, pos_k_, 1, k_, C_, stream_);
  if (cache) cache->release();
}

// The block's output: a + the feed-forward parts as Block<T>::forward_out sums them.
template <class T>
void GeneratorCuda<T>::block_out(int l, T* out) {
  const Layer& Ly = layers_[l];
  const int C = C_;
  if (Ly.combine == CombineKind::cg1) {
    cg1_forward(tmp_, Ly.gate_coef, Ly.gate_z, Ly.mlp_out, 1, C, stream_);
    add(out, Ly.a, tmp_, C, stream_);
    add_inplace(out, Ly.moe_out, C, stream_);
  } else if (Ly.combine == CombineKind::cg2) {
    cg2_forward(tmp_, Ly.gate_coef, Ly.gate_z, Ly.mlp_out, Ly.moe_out, 1, C, stream_);
    add(out, Ly.a, tmp_, C, stream_);
  } else if (Ly.has_mlp) {
    add(out, Ly.a, Ly.mlp_out, C, stream_);
    if (Ly.moe) add_inplace(out, Ly.moe_out, C, stream_);
  } else {
    add(out, Ly.a, Ly.moe_out, C, stream_);
  }
}

template class GeneratorCuda<float>;
template class GeneratorCuda<bf16>;

SCMOE_CUDA_END

// ExpertCache<bf16> is instantiated implicitly from expert_cache_impl.h where used (float comes with
// expert_cache.cpp): this source is built twice, natively and emulated, and a test binary may link both.
