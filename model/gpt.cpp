// GPT forward/backward orchestration (see gpt.h): builds the blocks of the configured architecture,
// wires each routed branch to its input tap, and routes the tap gradients back in backward.
#include "model/gpt.h"

#include <algorithm>
#include <cmath>

#include "core/rng.h"
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
  for (int l = 0; l < mc_.n_layer; l++) {  // wire routed inputs and their gradients
    Block<T>& b = blocks_[l];
    if (!b.moe) continue;
    if (taps_[l].kind == TapKind::u) {
      b.moe_in = blocks_[taps_[l].src].u;
      blocks_[taps_[l].src].du_taps.push_back(b.moe->dx);
    } else {
      b.moe_in = b.moe_norm_out;
    }
  }
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
  for (int l = 0; l < mc_.n_layer; l++) {
    Block<T>& b = blocks_[l];
    if (b.moe && taps_[l].kind == TapKind::norm_of_input)
      b.moe_norm.forward(b.moe_norm_out, resid_[taps_[l].src], N);
    b.forward(resid_[l + 1], resid_[l], rng);
  }
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
  // The aux and z losses are per-micro-batch means, so they enter with grad_scale * N (= 1/accum).
  double loss_scale = double(grad_scale_) * N;
  T* wte = params_.data() + wte_off_;
  T* dwte = grads_.data() + wte_off_;
  T* dlnf = scratch_.dnorm;
  ops::matmul_backward(dlnf, dwte, (T*)nullptr, logits_, lnf_out_, wte, N, C_, V_, false);
  lnf_.backward(dresid_, dlnf, resid_[mc_.n_layer], N, false);
  for (int l = mc_.n_layer - 1; l >= 0; l--) {
    blocks_[l].backward_moe(dresid_, scratch_, loss_scale);
    blocks_[l].backward(dresid_, resid_[l], scratch_);
    // dresid_ is now dL/d(input of block l): add the routed branches that normalised this input.
    for (int m = l; m < mc_.n_layer; m++)
      if (blocks_[m].moe && taps_[m].kind == TapKind::norm_of_input && taps_[m].src == l)
        blocks_[m].moe_norm.backward(dresid_, blocks_[m].moe->dx, resid_[l], N, true);
  }
  ops::encoder_backward(dwte, grads_.data() + wpe_off_, dresid_, inputs_, B_, Tn_, C_);
  grad_scale_ = 0;  // the dlogits buffer is consumed
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
