// The GPT on the CUDA backend (see gpt_cuda.h): the same computation as GPT<T> (model/gpt.cpp, block.h,
// moe.h), one kernel sequence per block in the style of llm.c's train_gpt2.cu, in the CPU model's
// sequential order (single process: its overlapped schedule gives bit-identical results anyway).
#include "model/gpt_cuda.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include "kernels/cuda/adamw.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/crossentropy.h"
#include "kernels/cuda/device_memory.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/encoder.h"
#include "kernels/cuda/gates.h"
#include "kernels/cuda/gelu.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/norm.h"
#include "kernels/cuda/permute.h"
#include "kernels/cuda/router.h"
#include "comm/communicator.h"
#include "core/rng.h"
#include "kernels/cpu/permute.h"
#include "model/block_layout.h"

SCMOE_CUDA_BEGIN

namespace {

// The synchronous copies (cudaMemcpy) run on the legacy default stream; wait for our stream's work
// first so that they see (or do not overwrite) what it is still doing.
void sync_stream(cudaStream_t stream) {
#if defined(SCMOE_SIMT_EMU)
  (void)stream;
#else
  SCMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
#endif
}

void to_host(cudaStream_t stream, void* dst, const void* src, size_t bytes, const char* what) {
  sync_stream(stream);
  copy_to_host(dst, src, bytes, what);
}
void to_device(cudaStream_t stream, void* dst, const void* src, size_t bytes, const char* what) {
  sync_stream(stream);
  copy_to_device(dst, src, bytes, what);
}

size_t offset_of(const ParamTable& t, const std::string& name) {
  for (const auto& s : t.specs())
    if (s.name == name) return s.offset;
  SCMOE_FAIL("parameter table has no tensor '" << name << "'");
}

}  // namespace


template <class T>
struct GptCuda<T>::Layer {
  // parameter offsets; fc/fcp: the dense MLP, or the shared expert of a MoE block
  size_t ln1_w, ln1_b = 0, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b = 0, fc_w = 0, fc_b = 0, fcp_w = 0,
      fcp_b = 0;
  // saved activations
  T *ln1 = nullptr, *qkv = nullptr, *atty = nullptr, *a = nullptr, *ln2 = nullptr, *h = nullptr, *g = nullptr;
  T *tmp = nullptr;  // attention projection / MLP output before the residual add
  float *mean1 = nullptr, *rstd1 = nullptr, *mean2 = nullptr, *rstd2 = nullptr;
  AttentionBuffers<T> att;

  // The feed-forward variant (model/block.h). has_mlp: the dense MLP or the shared expert, hidden size F.
  bool has_mlp = true, moe = false;
  int F = 0;
  CombineKind combine = CombineKind::add;
  int u_tap_for = -1;     // the MoE block whose routed branch reads this block's u (LN2 output)
  int norm_tap_for = -1;  // the MoE block whose own norm reads this block's input
  T* mlp_out = nullptr;   // the MLP / shared expert's output (saved when a combine gate reads it)
  // combine gate (cg1: [1, C], cg2: [2, C], no bias): logits [N, 2] and the coefficients
  size_t comb_w = 0;
  T* gate_z = nullptr;
  float* gate_coef = nullptr;
  // The routed branch (moe.h): input tap, gate, experts, saved router and dispatch state.
  int src = -1;           // the block whose u (or normalised input) the branch reads
  bool own_norm = false;  // Pos-1/Pos-3: the branch normalises resid_[src] with its own norm
  size_t mn_w = 0, mn_b = 0, gate_w = 0, noise_w = 0;
  std::vector<size_t> efc_w, efc_b, efp_w, efp_b;  // per expert
  T *moe_norm_out = nullptr, *moe_out = nullptr;
  const T* moe_in = nullptr;
  float *mn_mean = nullptr, *mn_rstd = nullptr;
  T *logits = nullptr, *xe = nullptr, *eh = nullptr, *eg = nullptr, *ye = nullptr;
  T* noise_pre = nullptr;        // x . W_noise (gate noise)
  float* eps = nullptr;          // this layer's slice of noise_eps_
  bool noise_applied = false;    // the last forward added noise (its backward must follow it)
  float *probs = nullptr, *topk_gate = nullptr;
  int32_t *topk_idx = nullptr, *pos = nullptr;
  int64_t* route_counts = nullptr;  // assignments per expert before capacity (router backward)
  int64_t* stats = nullptr;         // [E + 2]: admitted rows per expert, dropped, the two losses (fp32)
  std::vector<int64_t> rows;        // host copy of the admitted rows per expert (last forward)
  int stat = -1;                    // index into moe_stats_
  // Expert parallelism (saved from forward for backward): receive row -> expert-buffer row (-1:
  // dropped), the outputs returned in send order, the splits per peer (rows) and the local experts'
  // segments of the expert buffer.
  int32_t* expert_row = nullptr;
  T* ys = nullptr;
  std::vector<size_t> send_rows, recv_rows, send_off, recv_off;
  int64_t recv_total = 0;
  std::vector<int64_t> seg_counts, seg_offsets;
};

template <class T>
template <class U>
U* GptCuda<T>::take(size_t n, bool allocate) {
  size_t bytes = (n * sizeof(U) + 255) / 256 * 256;
  size_t off = arena_used_;
  arena_used_ += bytes;
  return allocate ? reinterpret_cast<U*>(arena_ + off) : nullptr;
}

template <class T>
GptCuda<T>::GptCuda(const Config& cfg, const ParamTable& table, int B, cudaStream_t stream, int attention,
                    Communicator* comm)
    : mc_(cfg.model), oc_(cfg.optim), table_(table), B_(B), Tn_(cfg.model.seq_len), C_(cfg.model.d_model),
      V_(cfg.model.vocab_size), F_(cfg.model.d_ff), N_(B * cfg.model.seq_len), stream_(stream) {
  if (comm && comm->world_size() > 1) comm_ = comm, W_ = comm->world_size(), rank_ = comm->rank();
  const MoeConfig& mo = cfg.moe;
  const bool rms = mc_.norm == "rmsnorm";
  const ModelLayout ml = model_layout(cfg);  // as GPT<T>'s constructor built `table`
  E_ = ml.E, k_ = ml.k, Fe_ = ml.Fe;
  if (E_ > 0) {
    renormalize_ = mo.renormalize, aux_coef_ = mo.aux_loss_coef, z_coef_ = mo.z_loss_coef;
    noise_ = mo.gate_noise;
    SCMOE_CHECK(E_ % W_ == 0, "moe.num_experts (" << E_ << ") must be divisible by the world size (" << W_
                                                   << ") for expert parallelism");
    El_ = E_ / W_, first_expert_ = rank_ * El_;
    // Rows per expert over the global batch (MoE<T>::capacity()); dropless when capacity_factor <= 0.
    const double cf = mo.capacity_factor;
    const int64_t Ng = int64_t(N_) * W_;
    capacity_ = cf <= 0 ? Ng * k_ : std::min<int64_t>(int64_t(k_) * int64_t(std::ceil(cf * double(Ng) / E_)), Ng);
  }
  layers_.resize(mc_.n_layer);
  wte_ = offset_of(table, "wte"), wpe_ = offset_of(table, "wpe"), lnf_w_ = offset_of(table, "ln_f.weight");
  if (mc_.norm != "rmsnorm") lnf_b_ = offset_of(table, "ln_f.bias");
  for (int l = 0; l < mc_.n_layer; l++) {
    const std::string p = "blocks." + std::to_string(l);
    Layer& L = layers_[l];
    L.ln1_w = offset_of(table, p + ".ln1.weight");
    L.ln2_w = offset_of(table, p + ".ln2.weight");
    if (!rms) L.ln1_b = offset_of(table, p + ".ln1.bias"), L.ln2_b = offset_of(table, p + ".ln2.bias");
    L.qkv_w = offset_of(table, p + ".attn.qkv.weight"), L.qkv_b = offset_of(table, p + ".attn.qkv.bias");
    L.proj_w = offset_of(table, p + ".attn.proj.weight"), L.proj_b = offset_of(table, p + ".attn.proj.bias");
    const BlockLayout& bl = ml.blocks[l];
    L.moe = bl.moe, L.F = bl.F, L.has_mlp = bl.has_mlp;
    const std::string mlp = p + (L.moe ? ".shared_expert" : ".mlp");
    if (L.has_mlp) {
      L.fc_w = offset_of(table, mlp + ".fc.weight"), L.fc_b = offset_of(table, mlp + ".fc.bias");
      L.fcp_w = offset_of(table, mlp + ".proj.weight"), L.fcp_b = offset_of(table, mlp + ".proj.bias");
    }
    if (!L.moe) continue;
    L.combine = bl.combine, L.own_norm = bl.own_norm, L.src = bl.src;
    if (L.combine != CombineKind::add) L.comb_w = offset_of(table, p + ".combine.weight");
    if (L.own_norm) {
      L.mn_w = offset_of(table, p + ".moe.norm.weight");
      if (!rms) L.mn_b = offset_of(table, p + ".moe.norm.bias");
      layers_[L.src].norm_tap_for = l;
    } else {
      layers_[L.src].u_tap_for = l;
    }
    L.gate_w = offset_of(table, p + ".moe.gate.weight");
    if (noise_) L.noise_w = offset_of(table, p + ".moe.noise.weight");
    if (W_ > 1) {  // the table must be this rank's: another rank's first expert is not in it
      const std::string other = p + ".moe.experts." + std::to_string((first_expert_ + El_) % E_) + ".fc.weight";
      for (const auto& sp : table.specs())
        SCMOE_CHECK(sp.name != other, "GptCuda on rank " << rank_ << " of " << W_ << ": the parameter table holds "
                                                         << other << ", which another rank owns (build the CPU model "
                                                                     "with the communicator)");
    }
    for (int e = first_expert_; e < first_expert_ + El_; e++) {  // this rank's experts
      const std::string x = p + ".moe.experts." + std::to_string(e);
      L.efc_w.push_back(offset_of(table, x + ".fc.weight")), L.efc_b.push_back(offset_of(table, x + ".fc.bias"));
      L.efp_w.push_back(offset_of(table, x + ".proj.weight")), L.efp_b.push_back(offset_of(table, x + ".proj.bias"));
    }
    L.rows.assign(El_, 0);
    L.stat = int(moe_stats_.size());
    MoeLayerStats st;
    st.layer = l;
    st.tokens_per_expert.assign(E_, 0);
    moe_stats_.push_back(st);
  }
  host_stats_.assign(size_t(E_) + 2, 0);
  if (noise_) host_eps_.resize(moe_stats_.size() * size_t(N_) * E_);  // sized once: copies read from it
  // One routed branch's input gradient (dmoe_x_) is live from its backward to its tap's: the taps of
  // two branches never interleave (a tap is the branch's own block or the one before it, and MoE
  // blocks are moe.every >= 2 apart unless each taps itself).
  for (int l = 0; l < mc_.n_layer; l++)
    if (layers_[l].moe) SCMOE_CHECK(layers_[l].src == l || (l >= 1 && !layers_[l - 1].moe), "MoE tap layout");
  // The GEMM path runs its products on tensor cores but keeps B*H*T*T probabilities; the flash path
  // keeps none and runs on the SIMT cores. Auto takes flash only where the T x T matrices get large.
  const int hd = C_ / mc_.n_head;
  if (attention < 0) attention = Tn_ >= 2048 && flash_attention_supports(hd) ? 1 : 0;
  SCMOE_CHECK(attention == 0 || flash_attention_supports(hd),
              "flash attention has no kernel for head size " << hd << " (model.d_model / model.n_head)");
  attention_path_ = int(attention == 1 ? AttentionPath::flash : AttentionPath::gemm_softmax);

  const size_t P = table.total();
  param_bytes_ = P * sizeof(float) * 4 + (std::is_same<T, float>::value ? 0 : P * sizeof(T));
  params_ = static_cast<float*>(device_alloc(P * sizeof(float), "parameters (fp32 master weights)"));
  grads_ = static_cast<float*>(device_alloc(P * sizeof(float), "gradients"));
  m_ = static_cast<float*>(device_alloc(P * sizeof(float), "AdamW first moments"));
  v_ = static_cast<float*>(device_alloc(P * sizeof(float), "AdamW second moments"));
  if (std::is_same<T, float>::value) params_t_ = reinterpret_cast<T*>(params_);
  else params_t_ = static_cast<T*>(device_alloc(P * sizeof(T), "parameters (bf16 copy)"));
  fill_zero(grads_, P * sizeof(float), stream_, "gradients");
  fill_zero(m_, P * sizeof(float), stream_, "AdamW first moments");
  fill_zero(v_, P * sizeof(float), stream_, "AdamW second moments");
  std::vector<ParamChunk> chunks = param_chunks(table);
  num_chunks_ = int(chunks.size());
  chunks_ = device_alloc(chunks.size() * sizeof(ParamChunk), "optimizer chunk table");
  copy_to_device(chunks_, chunks.data(), chunks.size() * sizeof(ParamChunk), "optimizer chunk table");

  layout(false);  // measure, then allocate exactly that (the estimate printed is what is used)
  act_bytes_ = arena_used_;
  set_memory_estimate(param_bytes_ + act_bytes_, "weights, gradients and AdamW state " + format_bytes(param_bytes_) +
                                                     ", activations " + format_bytes(act_bytes_));
  arena_ = static_cast<char*>(device_alloc(act_bytes_, "the activation arena"));
  layout(true);
}

template <class T>
void GptCuda<T>::layout(bool allocate) {
  arena_used_ = 0;
  const size_t NC = size_t(N_) * C_;
  const AttentionBufferSizes as = attention_buffer_sizes(AttentionPath(attention_path_), B_, Tn_, C_, mc_.n_head);
  inputs_ = take<int32_t>(N_, allocate);
  targets_ = take<int32_t>(N_, allocate);
  resid_.assign(mc_.n_layer + 1, nullptr);
  for (auto& r : resid_) r = take<T>(NC, allocate);
  const size_t NE = size_t(N_) * E_, Nk = size_t(N_) * k_;
  const size_t rows = Nk * W_;  // the most rows this rank's experts can receive (all of every rank's)
  // ... and admit: at most `capacity` per local expert (so with a capacity factor the expert buffers do
  // not grow with the number of ranks; the receive buffers must).
  const size_t admitted = std::min(rows, size_t(El_) * size_t(std::max<int64_t>(capacity_, 0)));
  for (Layer& L : layers_) {
    L.ln1 = take<T>(NC, allocate), L.qkv = take<T>(3 * NC, allocate), L.atty = take<T>(NC, allocate);
    L.a = take<T>(NC, allocate), L.ln2 = take<T>(NC, allocate);
    if (L.has_mlp) L.h = take<T>(size_t(N_) * L.F, allocate), L.g = take<T>(size_t(N_) * L.F, allocate);
    L.mean1 = take<float>(N_, allocate), L.rstd1 = take<float>(N_, allocate);
    L.mean2 = take<float>(N_, allocate), L.rstd2 = take<float>(N_, allocate);
    L.att.saved = take<T>(as.saved, allocate), L.att.saved_f32 = take<float>(as.saved_f32, allocate);
    if (!L.moe) continue;
    if (L.combine != CombineKind::add) {
      L.mlp_out = take<T>(NC, allocate);
      L.gate_z = take<T>(size_t(N_) * 2, allocate), L.gate_coef = take<float>(size_t(N_) * 2, allocate);
    }
    if (L.combine == CombineKind::cg2) L.moe_out = take<T>(NC, allocate);  // cg2's backward reads it
    if (L.own_norm) {
      L.moe_norm_out = take<T>(NC, allocate);
      L.mn_mean = take<float>(N_, allocate), L.mn_rstd = take<float>(N_, allocate);
    }
    L.logits = take<T>(NE, allocate), L.probs = take<float>(NE, allocate);
    if (noise_) L.noise_pre = take<T>(NE, allocate);
    L.topk_idx = take<int32_t>(Nk, allocate), L.topk_gate = take<float>(Nk, allocate);
    L.pos = take<int32_t>(Nk, allocate);
    L.route_counts = take<int64_t>(E_, allocate), L.stats = take<int64_t>(size_t(E_) + 2, allocate);
    L.xe = take<T>(admitted * C_, allocate), L.ye = take<T>(admitted * C_, allocate);
    L.eh = take<T>(admitted * Fe_, allocate), L.eg = take<T>(admitted * Fe_, allocate);
    if (W_ > 1) L.expert_row = take<int32_t>(rows, allocate), L.ys = take<T>(Nk * C_, allocate);
  }
  att_scratch_ = take<T>(as.scratch, allocate);
  att_scratch_f32_ = take<float>(as.scratch_f32, allocate);
  for (Layer& L : layers_) L.att.scratch = att_scratch_, L.att.scratch_f32 = att_scratch_f32_, L.tmp = nullptr;
  T* tmp = take<T>(NC, allocate);
  for (Layer& L : layers_) L.tmp = tmp;
  if (E_ > 0) {  // MoE scratch; the routed output of blocks that do not keep their own
    moe_out_ = take<T>(NC, allocate);
    dse_ = take<T>(NC, allocate), dmoe_y_ = take<T>(NC, allocate), dmoe_x_ = take<T>(NC, allocate);
    dz_ = take<T>(size_t(N_) * 2, allocate);
    dlogits_ = take<T>(NE, allocate), dgate_ = take<float>(Nk, allocate), pmean_ = take<float>(E_, allocate);
    plan_offsets_ = take<int64_t>(size_t(E_) + 1, allocate);
    dye_ = take<T>(admitted * C_, allocate), dxe_ = take<T>(admitted * C_, allocate);
    if (W_ > 1) {
      xs_ = take<T>(Nk * C_, allocate), xr_ = take<T>(rows * C_, allocate), yr_ = take<T>(rows * C_, allocate);
      send_bucket_ = take<int64_t>(size_t(E_) * k_, allocate), recv_bucket_ = take<int64_t>(size_t(E_) * k_, allocate);
      router_sums_ = take<double>(2 * size_t(E_) + 1, allocate);
    }
  }
  for (size_t l = 0; l < layers_.size(); l++) {
    Layer& L = layers_[l];
    if (!L.moe) continue;
    if (L.combine != CombineKind::cg2) L.moe_out = moe_out_;
    L.moe_in = L.own_norm ? L.moe_norm_out : layers_[L.src].ln2;
  }
  if (noise_) {  // one slice of eps per MoE layer, uploaded together
    noise_eps_ = take<float>(moe_stats_.size() * NE, allocate);
    for (Layer& L : layers_)
      if (L.moe) L.eps = noise_eps_ ? noise_eps_ + size_t(L.stat) * NE : nullptr;
  }
  lnf_out_ = take<T>(NC, allocate);
  lnf_mean_ = take<float>(N_, allocate), lnf_rstd_ = take<float>(N_, allocate);
  logits_ = take<T>(size_t(N_) * V_, allocate);
  losses_ = take<float>(N_, allocate), loss_ = take<float>(1, allocate), clip_ = take<float>(2, allocate);
  norm_scratch_ = take<double>(grad_norm_scratch() + 2, allocate);  // + the two groups' sums
  dresid_ = take<T>(NC, allocate), dnorm_ = take<T>(NC, allocate), datty_ = take<T>(NC, allocate);
  dqkv_ = take<T>(3 * NC, allocate);
  // the MLP's (or shared expert's) hidden gradients, and the experts' (their admitted rows of Fe)
  const size_t hidden = std::max({size_t(N_) * F_, size_t(N_) * Fe_, admitted * Fe_});
  dh_ = take<T>(hidden, allocate), dg_ = take<T>(hidden, allocate);
  workspace_bytes_ = std::max({norm_backward_workspace_bytes(N_, C_), encoder_backward_workspace_bytes(B_, Tn_, V_),
                               bias_backward_workspace_bytes(N_, std::max({3 * C_, F_, Fe_}))});
  if (E_ > 0)
    workspace_bytes_ = std::max({workspace_bytes_, router_forward_workspace_bytes(N_, E_),
                                 dispatch_workspace_bytes(N_, k_, E_)});
  workspace_ = take<char>(workspace_bytes_, allocate);
}

template <class T>
GptCuda<T>::~GptCuda() {
  device_free(arena_);
  device_free(chunks_);
  if (!std::is_same<T, float>::value) device_free(params_t_);
  device_free(v_), device_free(m_), device_free(grads_), device_free(params_);
}

template <class T>
void GptCuda<T>::set_params(const float* host) {
  const size_t P = table_.total();
  to_device(stream_, params_, host, P * sizeof(float), "parameters");
  if (!std::is_same<T, float>::value) {  // the bf16 working copy, rounded to nearest
    std::vector<T> t(P);
    for (size_t i = 0; i < P; i++) t[i] = from_f32<T>(host[i]);
    to_device(stream_, params_t_, t.data(), P * sizeof(T), "parameters (bf16 copy)");
  }
}
template <class T>
void GptCuda<T>::get_params(float* host) const {
  to_host(stream_, host, params_, table_.total() * sizeof(float), "parameters");
}
template <class T>
void GptCuda<T>::get_grads(float* host) const {
  to_host(stream_, host, grads_, table_.total() * sizeof(float), "gradients");
}
template <class T>
void GptCuda<T>::set_moments(const float* m, const float* v) {
  to_device(stream_, m_, m, table_.total() * sizeof(float), "AdamW first moments");
  to_device(stream_, v_, v, table_.total() * sizeof(float), "AdamW second moments");
}
template <class T>
void GptCuda<T>::get_moments(float* m, float* v) const {
  to_host(stream_, m, m_, table_.total() * sizeof(float), "AdamW first moments");
  to_host(stream_, v, v_, table_.total() * sizeof(float), "AdamW second moments");
}
template <class T>
void GptCuda<T>::zero_grad() {
  fill_zero(grads_, table_.total() * sizeof(float), stream_, "gradients");
}

template <class T>
float GptCuda<T>::forward(const int32_t* inputs, const int32_t* targets, float grad_scale, Rng* rng) {
  const bool rms = mc_.norm == "rmsnorm";
  const int N = N_, C = C_, H = mc_.n_head;
  const AttentionPath path = AttentionPath(attention_path_);
  const T* w = params_t_;
  // Both uploads before any launch: a synchronous copy after them would wait for the whole forward.
  to_device(stream_, inputs_, inputs, N * sizeof(int32_t), "input tokens");
  if (targets) {
    for (int i = 0; i < N; i++)
      SCMOE_CHECK(targets[i] >= 0 && targets[i] < V_, "target token " << targets[i] << " outside the vocabulary");
    to_device(stream_, targets_, targets, N * sizeof(int32_t), "target tokens");
  }
  const bool noisy = noise_ && rng;
  encoder_forward(resid_[0], inputs_, w + wte_, w + wpe_, B_, Tn_, C,
                  stream_);
  for (int l = 0; l < mc_.n_layer; l++) {
    Layer& L = layers_[l];
    const T* x = resid_[l];
    if (rms) rmsnorm_forward(L.ln1, L.rstd1, x, w + L.ln1_w, N, C, stream_);
    else layernorm_forward(L.ln1, L.mean1, L.rstd1, x, w + L.ln1_w, w + L.ln1_b, N, C, stream_);
    matmul_forward(L.qkv, L.ln1, w + L.qkv_w, w + L.qkv_b, N, C, 3 * C, stream_);
    attention_forward(path, L.atty, L.qkv, L.att, B_, Tn_, C, H, stream_);
    matmul_forward(L.tmp, L.atty, w + L.proj_w, w + L.proj_b, N, C, C, stream_);
    // a = x + attn, then LN2(a) in one pass over the rows
    if (rms) fused_residual_rmsnorm_forward(L.a, L.ln2, L.rstd2, x, L.tmp, w + L.ln2_w, N, C, stream_);
    else
      fused_residual_layernorm_forward(L.a, L.ln2, L.mean2, L.rstd2, x, L.tmp, w + L.ln2_w, w + L.ln2_b, N, C,
                                       stream_);
    if (!L.moe) {  // dense
      matmul_forward(L.h, L.ln2, w + L.fc_w, w + L.fc_b, N, C, F_, stream_);
      gelu_forward(L.g, L.h, int64_t(N) * F_, stream_);
      matmul_forward(L.tmp, L.g, w + L.fcp_w, w + L.fcp_b, N, F_, C, stream_);
      add(resid_[l + 1], L.a, L.tmp, int64_t(N) * C, stream_);
      continue;
    }
    // The routed branch (sequential: right after the attention, as the CPU model's plan runs it).
    if (L.own_norm) {
      if (rms) rmsnorm_forward(L.moe_norm_out, L.mn_rstd, resid_[L.src], w + L.mn_w, N, C, stream_);
      else layernorm_forward(L.moe_norm_out, L.mn_mean, L.mn_rstd, resid_[L.src], w + L.mn_w, w + L.mn_b, N, C,
                             stream_);
    }
    if (noisy) draw_gate_noise(*rng, L);
    moe_forward(L, moe_stats_[L.stat], noisy);
    // The shared expert and the combine gate's logits (Block<T>::forward_ffn).
    const int64_t NC = int64_t(N) * C;
    T* se = L.mlp_out ? L.mlp_out : L.tmp;
    if (L.has_mlp) {
      matmul_forward(L.h, L.ln2, w + L.fc_w, w + L.fc_b, N, C, L.F, stream_);
      gelu_forward(L.g, L.h, int64_t(N) * L.F, stream_);
      matmul_forward(se, L.g, w + L.fcp_w, w + L.fcp_b, N, L.F, C, stream_);
    }
    if (L.combine != CombineKind::add)
      matmul_forward(L.gate_z, L.ln2, w + L.comb_w, (const T*)nullptr, N, C, L.combine == CombineKind::cg1 ? 1 : 2,
                     stream_);
    // out = a + combined (Block<T>::forward_out)
    T* out = resid_[l + 1];
    if (L.combine == CombineKind::cg1) {
      cg1_forward(L.tmp, L.gate_coef, L.gate_z, se, N, C, stream_);
      add(out, L.a, L.tmp, NC, stream_);
      add_inplace(out, L.moe_out, NC, stream_);
    } else if (L.combine == CombineKind::cg2) {
      cg2_forward(L.tmp, L.gate_coef, L.gate_z, se, L.moe_out, N, C, stream_);
      add(out, L.a, L.tmp, NC, stream_);
    } else if (L.has_mlp) {
      add(out, L.a, se, NC, stream_);
      add_inplace(out, L.moe_out, NC, stream_);
    } else {
      add(out, L.a, L.moe_out, NC, stream_);
    }
  }
  const T* xf = resid_[mc_.n_layer];
  if (rms) rmsnorm_forward(lnf_out_, lnf_rstd_, xf, w + lnf_w_, N, C, stream_);
  else layernorm_forward(lnf_out_, lnf_mean_, lnf_rstd_, xf, w + lnf_w_, w + lnf_b_, N, C,
                         stream_);
  matmul_forward(logits_, lnf_out_, w + wte_, (const T*)nullptr, N, C, V_, stream_);
  grad_scale_ = 0;
  if (!targets) return 0.f;
  crossentropy_forward_backward(logits_, losses_, targets_, N, V_, grad_scale, grad_scale > 0, stream_);
  crossentropy_mean_loss(loss_, losses_, N, stream_);
  grad_scale_ = grad_scale;
  float loss = 0;
  to_host(stream_, &loss, loss_, sizeof(float), "loss");
  return loss;
}

template <class T>
void GptCuda<T>::backward() {
  SCMOE_CHECK(grad_scale_ > 0, "backward() needs a forward() with grad_scale > 0");
  const bool rms = mc_.norm == "rmsnorm";
  const int N = N_, C = C_, H = mc_.n_head;
  const AttentionPath path = AttentionPath(attention_path_);
  const T* w = params_t_;
  float* g = grads_;
  const size_t wte = wte_, lnf_w = lnf_w_;
  matmul_backward<T, float>(dnorm_, g + wte, nullptr, logits_, lnf_out_, w + wte, N, C, V_, false, stream_);
  if (rms)
    rmsnorm_backward(dresid_, g + lnf_w, dnorm_, resid_[mc_.n_layer], w + lnf_w, lnf_rstd_, N, C, false, workspace_,
                     workspace_bytes_, stream_);
  else {
    const size_t lnf_b = lnf_b_;
    layernorm_backward(dresid_, g + lnf_w, g + lnf_b, dnorm_, resid_[mc_.n_layer], w + lnf_w, lnf_mean_, lnf_rstd_,
                       N, C, false, workspace_, workspace_bytes_, stream_);
  }
  for (int l = mc_.n_layer - 1; l >= 0; l--) {
    Layer& L = layers_[l];
    // dresid holds dL/d(out) = dL/d(a) through the residual + dL/d(mlp output). Split it into the
    // shared expert's (dse) and the routed branch's (dmoe) gradients (Block<T>::out_backward).
    const T* dse = dresid_;
    const T* dmoe = dresid_;
    T* se = L.mlp_out ? L.mlp_out : L.tmp;  // read only by the combine gates (then it is mlp_out)
    if (L.combine == CombineKind::cg1) {
      cg1_backward(dse_, dz_, dresid_, L.gate_coef, se, N, C, stream_);
      dse = dse_;
    } else if (L.combine == CombineKind::cg2) {
      cg2_backward(dse_, dmoe_y_, dz_, dresid_, L.gate_coef, se, L.moe_out, N, C, stream_);
      dse = dse_, dmoe = dmoe_y_;
    }
    if (L.moe) moe_backward(L, dmoe);  // leaves dL/d(routed input) in dmoe_x_
    // dL/du: the MLP / shared expert, the combine gate, the routed branch reading this u
    const T* du = dnorm_;
    if (L.has_mlp) {
      matmul_backward<T, float>(dg_, g + L.fcp_w, g + L.fcp_b, dse, L.g, w + L.fcp_w, N, L.F, C, false, stream_);
      gelu_backward(dh_, L.h, dg_, int64_t(N) * L.F, stream_);
      matmul_backward<T, float>(dnorm_, g + L.fc_w, g + L.fc_b, dh_, L.ln2, w + L.fc_w, N, C, L.F, false, stream_);
      if (L.combine != CombineKind::add)
        matmul_backward<T, float>(dnorm_, g + L.comb_w, (float*)nullptr, dz_, L.ln2, w + L.comb_w, N, C,
                                  L.combine == CombineKind::cg1 ? 1 : 2, true, stream_);
      if (L.u_tap_for >= 0) add_inplace(dnorm_, dmoe_x_, int64_t(N) * C, stream_);
    } else if (L.u_tap_for >= 0) {
      du = dmoe_x_;
    } else {
      fill(dnorm_, 0.f, int64_t(N) * C, stream_);
    }
    if (rms)
      rmsnorm_backward(dresid_, g + L.ln2_w, du, L.a, w + L.ln2_w, L.rstd2, N, C, true, workspace_,
                       workspace_bytes_, stream_);
    else
      layernorm_backward(dresid_, g + L.ln2_w, g + L.ln2_b, du, L.a, w + L.ln2_w, L.mean2, L.rstd2, N, C, true,
                         workspace_, workspace_bytes_, stream_);
    // dresid = dL/d(a): flows to x through the residual and to the attention projection
    matmul_backward<T, float>(datty_, g + L.proj_w, g + L.proj_b, dresid_, L.atty, w + L.proj_w, N, C, C, false,
                              stream_);
    attention_backward(path, dqkv_, datty_, L.qkv, L.atty, L.att, B_, Tn_, C, H, stream_);
    matmul_backward<T, float>(dnorm_, g + L.qkv_w, g + L.qkv_b, dqkv_, L.ln1, w + L.qkv_w, N, C, 3 * C, false,
                              stream_);
    if (rms)
      rmsnorm_backward(dresid_, g + L.ln1_w, dnorm_, resid_[l], w + L.ln1_w, L.rstd1, N, C, true, workspace_,
                       workspace_bytes_, stream_);
    else
      layernorm_backward(dresid_, g + L.ln1_w, g + L.ln1_b, dnorm_, resid_[l], w + L.ln1_w, L.mean1, L.rstd1, N, C,
                         true, workspace_, workspace_bytes_, stream_);
    if (L.norm_tap_for >= 0) {  // a routed branch normalised this block's input: its gradient joins here
      const Layer& M = layers_[L.norm_tap_for];
      if (rms)
        rmsnorm_backward(dresid_, g + M.mn_w, dmoe_x_, resid_[l], w + M.mn_w, M.mn_rstd, N, C, true, workspace_,
                         workspace_bytes_, stream_);
      else
        layernorm_backward(dresid_, g + M.mn_w, g + M.mn_b, dmoe_x_, resid_[l], w + M.mn_w, M.mn_mean, M.mn_rstd,
                           N, C, true, workspace_, workspace_bytes_, stream_);
    }
  }
  encoder_backward(g + wte, g + wpe_, dresid_, inputs_, B_, Tn_, C_, V_, workspace_,
                   workspace_bytes_, stream_);
  grad_scale_ = 0;  // the dlogits buffer is consumed
}

// The routed experts on B x seq_len rows of L.moe_in (MoE<T>::forward_*, one process): gate logits,
// router, dispatch plan, then the admitted rows per expert to the host (the one synchronisation),
// permute, each expert's MLP on its rows, and the gate-weighted combine into L.moe_out.
template <class T>
void GptCuda<T>::moe_forward(Layer& L, MoeLayerStats& st, bool noisy) {
  const int N = N_, C = C_, E = E_, k = k_, F = Fe_;
  const T* w = params_t_;
  float* losses = reinterpret_cast<float*>(L.stats + E + 1);
  matmul_forward(L.logits, L.moe_in, w + L.gate_w, (const T*)nullptr, N, C, E, stream_);
  L.noise_applied = noisy;
  if (noisy) {  // logits += eps * softplus(x . W_noise)
    matmul_forward(L.noise_pre, L.moe_in, w + L.noise_w, (const T*)nullptr, N, C, E, stream_);
    gate_noise_forward(L.logits, L.noise_pre, L.eps, int64_t(N) * E, stream_);
  }
  if (W_ > 1) return moe_forward_ep(L, st);
  router_forward(L.logits, N, E, k, renormalize_, L.probs, L.topk_idx, L.topk_gate, pmean_, L.route_counts, losses,
                 workspace_, stream_);
  dispatch_plan(L.topk_idx, N, k, E, capacity_, L.pos, L.stats, plan_offsets_, L.stats + E, workspace_, stream_);
  to_host(stream_, host_stats_.data(), L.stats, (size_t(E) + 2) * sizeof(int64_t), "router statistics");
  SCMOE_CHECK(host_stats_[E] >= 0, "MoE layer " << st.layer << ": the dispatch plan saw an expert index outside [0, "
                                                 << E << ")");
  float host_losses[2];
  std::memcpy(host_losses, &host_stats_[E + 1], sizeof host_losses);
  int64_t R = 0;
  for (int e = 0; e < E; e++) L.rows[e] = host_stats_[e], R += host_stats_[e];
  st.aux = host_losses[0], st.z = host_losses[1];
  st.dropped = host_stats_[E], st.assignments = int64_t(N) * k;
  st.tokens_per_expert = L.rows;

  permute_forward(L.xe, L.moe_in, L.pos, N, k, C, stream_);
  int64_t off = 0;
  for (int e = 0; e < E; e++) {
    if (L.rows[e] > 0)
      matmul_forward(L.eh + off * F, L.xe + off * C, w + L.efc_w[e], w + L.efc_b[e], int(L.rows[e]), C, F, stream_);
    off += L.rows[e];
  }
  if (R > 0) gelu_forward(L.eg, L.eh, R * F, stream_);
  off = 0;
  for (int e = 0; e < E; e++) {
    if (L.rows[e] > 0)
      matmul_forward(L.ye + off * C, L.eg + off * F, w + L.efp_w[e], w + L.efp_b[e], int(L.rows[e]), F, C, stream_);
    off += L.rows[e];
  }
  combine_forward(L.moe_out, L.ye, L.topk_gate, L.pos, N, k, C, stream_);
}

// Backward of the routed branch from the gradient of its output dy: the gates' and experts' gradients,
// then the router's (with the aux / z losses, which are per-micro-batch means and so enter with
// grad_scale * N, as GPT<T>::run passes them) and the gate linear's. Leaves dL/d(L.moe_in) in dmoe_x_.
template <class T>
void GptCuda<T>::moe_backward(Layer& L, const T* dy) {
  if (W_ > 1) return moe_backward_ep(L, dy);
  const int N = N_, C = C_, E = E_, k = k_, F = Fe_;
  const T* w = params_t_;
  float* g = grads_;
  combine_backward(dye_, dgate_, dy, L.ye, L.topk_gate, L.pos, N, k, C, stream_);
  int64_t off = 0, R = 0;
  for (int e = 0; e < E; e++) {
    if (L.rows[e] > 0)
      matmul_backward<T, float>(dg_ + off * F, g + L.efp_w[e], g + L.efp_b[e], dye_ + off * C, L.eg + off * F,
                                w + L.efp_w[e], int(L.rows[e]), F, C, false, stream_);
    off += L.rows[e];
  }
  R = off;
  if (R > 0) gelu_backward(dh_, L.eh, dg_, R * F, stream_);
  off = 0;
  for (int e = 0; e < E; e++) {
    if (L.rows[e] > 0)
      matmul_backward<T, float>(dxe_ + off * C, g + L.efc_w[e], g + L.efc_b[e], dh_ + off * F, L.xe + off * C,
                                w + L.efc_w[e], int(L.rows[e]), C, F, false, stream_);
    off += L.rows[e];
  }
  permute_backward(dmoe_x_, dxe_, L.pos, N, k, C, false, stream_);
  const double loss_scale = double(grad_scale_) * N;
  router_backward(dlogits_, dgate_, L.logits, L.probs, L.topk_idx, L.route_counts, N, E, k, renormalize_,
                  float(aux_coef_ * loss_scale), float(z_coef_ * loss_scale), stream_);
  matmul_backward<T, float>(dmoe_x_, g + L.gate_w, (float*)nullptr, dlogits_, L.moe_in, w + L.gate_w, N, C, E, true,
                            stream_);
  if (L.noise_applied) {  // d(noise_pre) = dlogits * eps * softplus'(noise_pre), then the noise linear's
    gate_noise_backward(dlogits_, L.noise_pre, L.eps, int64_t(N) * E, stream_);
    matmul_backward<T, float>(dmoe_x_, g + L.noise_w, (float*)nullptr, dlogits_, L.moe_in, w + L.noise_w, N, C, E,
                              true, stream_);
  }
}

// MoE layer L's gate noise for this forward, drawn as MoE<T>::add_gate_noise draws it (one step draw
// per layer in layer order, then a stream per token: the same eps as the CPU backend's). Drawn while the
// device still runs the blocks before L and copied behind them; each layer has its own host slice, and
// the previous forward's copy of it finished at that forward's synchronisations.
template <class T>
void GptCuda<T>::draw_gate_noise(Rng& rng, Layer& L) {
  const size_t NE = size_t(N_) * E_;
  float* eps = host_eps_.data() + size_t(L.stat) * NE;
  const uint64_t base = rng.next_u64() ^ (0x9E3779B97F4A7C15ull * uint64_t(moe_stats_[L.stat].layer + 1));
  const int64_t first_token = int64_t(rank_) * N_;  // the noise follows the token, whichever rank has it
  for (int n = 0; n < N_; n++) {
    Rng tr(base + 0xD1B54A32D192ED03ull * uint64_t(first_token + n));
    for (int e = 0; e < E_; e++) eps[size_t(n) * E_ + e] = float(tr.normal());
  }
  copy_to_device_async(L.eps, eps, NE * sizeof(float), stream_, "gate noise");
}

// ---- Expert parallelism (W > 1), the CPU's Dispatcher and MoE<T> step for step (model/dispatcher.h).

// Rows of C values of T in a collective: f32 as such, bf16 as bytes (the communicators have no bf16).
template <class T>
void GptCuda<T>::exchange_rows(const Layer& L, const T* src, T* dst, bool toward_experts) {
  const size_t per_row = size_t(C_) * (std::is_same<T, float>::value ? 1 : sizeof(T));
  const DType dt = std::is_same<T, float>::value ? DType::f32 : DType::u8;
  auto scale = [&](const std::vector<size_t>& v) {
    std::vector<size_t> o(v);
    for (size_t& x : o) x *= per_row;
    return o;
  };
  const auto& sr = toward_experts ? L.send_rows : L.recv_rows;
  const auto& so = toward_experts ? L.send_off : L.recv_off;
  const auto& rr = toward_experts ? L.recv_rows : L.send_rows;
  const auto& ro = toward_experts ? L.recv_off : L.send_off;
  comm_->all_to_all_v(src, scale(sr), scale(so), dst, scale(rr), scale(ro), dt, nullptr);
}

// aux = E * sum_e pmean_e * f_e and z = mean lse^2 over the global batch (MoE<T>::reduce_router_stats):
// every rank's counts, N * pmean and N * z summed; the global counts go back to the device for the
// router's backward.
template <class T>
void GptCuda<T>::reduce_router_stats(Layer& L, MoeLayerStats& st) {
  const int E = E_, N = N_;
  const double Ng = double(N) * W_;
  std::vector<float> pmean(E), losses(2);
  std::vector<int64_t> counts(E);
  to_host(stream_, pmean.data(), pmean_, E * sizeof(float), "router pmean");
  to_host(stream_, counts.data(), L.route_counts, E * sizeof(int64_t), "router counts");
  to_host(stream_, losses.data(), reinterpret_cast<const float*>(L.stats + E + 1), 2 * sizeof(float), "router losses");
  std::vector<double> buf(2 * size_t(E) + 1);
  for (int e = 0; e < E; e++) buf[e] = double(counts[e]), buf[E + e] = double(pmean[e]) * N;
  buf[2 * E] = double(losses[1]) * N;
  to_device(stream_, router_sums_, buf.data(), buf.size() * sizeof(double), "router statistics");
  comm_->all_reduce_sum(router_sums_, buf.size(), DType::f64, nullptr);
  to_host(stream_, buf.data(), router_sums_, buf.size() * sizeof(double), "router statistics");
  double aux = 0;
  for (int e = 0; e < E; e++) {
    counts[e] = int64_t(std::llround(buf[e]));
    aux += (buf[E + e] / Ng) * buf[e] / (Ng * k_);
  }
  st.aux = aux * E, st.z = buf[2 * E] / Ng;
  to_device(stream_, L.route_counts, counts.data(), E * sizeof(int64_t), "global router counts");
}

// The routed branch through the ranks: gate and router (done by moe_forward), global router
// statistics, route_sort, the count exchange, admission on the host in the single-process order, the
// rows to the experts' ranks, this rank's experts, the outputs back, the combine.
template <class T>
void GptCuda<T>::moe_forward_ep(Layer& L, MoeLayerStats& st) {
  const int N = N_, C = C_, E = E_, k = k_, F = Fe_, W = W_, El = El_;
  const T* w = params_t_;
  float* losses = reinterpret_cast<float*>(L.stats + E + 1);
  router_forward(L.logits, N, E, k, renormalize_, L.probs, L.topk_idx, L.topk_gate, pmean_, L.route_counts, losses,
                 workspace_, stream_);
  reduce_router_stats(L, st);
  route_sort(L.topk_idx, N, k, E, L.pos, send_bucket_, workspace_, stream_);
  // Rows per (expert, choice) go to the expert's rank; afterwards both sides know every split.
  const size_t per = size_t(El) * k;
  comm_->all_to_all(send_bucket_, recv_bucket_, per, DType::i64, nullptr);
  std::vector<int64_t> send_bucket(size_t(E) * k), recv_bucket(size_t(E) * k);
  to_host(stream_, send_bucket.data(), send_bucket_, send_bucket.size() * sizeof(int64_t), "send counts");
  to_host(stream_, recv_bucket.data(), recv_bucket_, recv_bucket.size() * sizeof(int64_t), "receive counts");
  L.send_rows.assign(W, 0), L.recv_rows.assign(W, 0), L.send_off.assign(W, 0), L.recv_off.assign(W, 0);
  for (int r = 0; r < W; r++)
    for (size_t b = 0; b < per; b++)
      L.send_rows[r] += size_t(send_bucket[r * per + b]), L.recv_rows[r] += size_t(recv_bucket[r * per + b]);
  for (int r = 1; r < W; r++)
    L.send_off[r] = L.send_off[r - 1] + L.send_rows[r - 1], L.recv_off[r] = L.recv_off[r - 1] + L.recv_rows[r - 1];
  L.recv_total = int64_t(L.recv_off[W - 1] + L.recv_rows[W - 1]);
  SCMOE_CHECK(L.send_off[W - 1] + L.send_rows[W - 1] == size_t(N) * k,
              "MoE layer " << st.layer << ": the router chose an expert outside [0, " << E << ")");
  std::vector<int32_t> expert_row(std::max<int64_t>(L.recv_total, 1));
  L.seg_counts.assign(El, 0), L.seg_offsets.assign(El + 1, 0);
  const int64_t dropped = cpu::admit_rows(recv_bucket.data(), W, El, k, capacity_, L.recv_total, expert_row.data(),
                                          L.seg_counts.data(), L.seg_offsets.data());
  to_device(stream_, L.expert_row, expert_row.data(), L.recv_total * sizeof(int32_t), "expert rows");

  permute_forward(xs_, L.moe_in, L.pos, N, k, C, stream_);
  exchange_rows(L, xs_, xr_, true);
  scatter_rows(L.xe, xr_, L.expert_row, L.recv_total, C, stream_);
  const int64_t R = L.seg_offsets[El];
  for (int le = 0; le < El; le++) {
    const int64_t off = L.seg_offsets[le], n = L.seg_counts[le];
    L.rows[le] = n;
    if (n > 0) matmul_forward(L.eh + off * F, L.xe + off * C, w + L.efc_w[le], w + L.efc_b[le], int(n), C, F, stream_);
  }
  if (R > 0) gelu_forward(L.eg, L.eh, R * F, stream_);
  for (int le = 0; le < El; le++) {
    const int64_t off = L.seg_offsets[le], n = L.seg_counts[le];
    if (n > 0) matmul_forward(L.ye + off * C, L.eg + off * F, w + L.efp_w[le], w + L.efp_b[le], int(n), F, C, stream_);
  }
  gather_rows(yr_, L.ye, L.expert_row, L.recv_total, C, stream_);
  exchange_rows(L, yr_, L.ys, false);
  combine_forward(L.moe_out, L.ys, L.topk_gate, L.pos, N, k, C, stream_);
  st.tokens_per_expert.assign(E, 0);
  for (int le = 0; le < El; le++) st.tokens_per_expert[first_expert_ + le] = L.seg_counts[le];
  st.dropped = dropped, st.assignments = int64_t(N) * k;
}

// Backward mirrored: the output gradient to the experts' ranks, the experts' backward, the input
// gradient back; then the router (global counts, losses over the global batch) and the gate.
template <class T>
void GptCuda<T>::moe_backward_ep(Layer& L, const T* dy) {
  const int N = N_, C = C_, E = E_, k = k_, F = Fe_, El = El_;
  const T* w = params_t_;
  float* g = grads_;
  combine_backward(xs_, dgate_, dy, L.ys, L.topk_gate, L.pos, N, k, C, stream_);
  exchange_rows(L, xs_, yr_, true);
  scatter_rows(dye_, yr_, L.expert_row, L.recv_total, C, stream_);
  const int64_t R = L.seg_offsets[El];
  for (int le = 0; le < El; le++) {
    const int64_t off = L.seg_offsets[le], n = L.seg_counts[le];
    if (n > 0)
      matmul_backward<T, float>(dg_ + off * F, g + L.efp_w[le], g + L.efp_b[le], dye_ + off * C, L.eg + off * F,
                                w + L.efp_w[le], int(n), F, C, false, stream_);
  }
  if (R > 0) gelu_backward(dh_, L.eh, dg_, R * F, stream_);
  for (int le = 0; le < El; le++) {
    const int64_t off = L.seg_offsets[le], n = L.seg_counts[le];
    if (n > 0)
      matmul_backward<T, float>(dxe_ + off * C, g + L.efc_w[le], g + L.efc_b[le], dh_ + off * F, L.xe + off * C,
                                w + L.efc_w[le], int(n), C, F, false, stream_);
  }
  gather_rows(xr_, dxe_, L.expert_row, L.recv_total, C, stream_);
  exchange_rows(L, xr_, xs_, false);
  permute_backward(dmoe_x_, xs_, L.pos, N, k, C, false, stream_);
  // The kernel normalises by the local N; the losses are means over the global batch with global
  // counts, hence the N / N_global factor on aux (MoE<T>::backward_finish).
  const double loss_scale = double(grad_scale_) * N, f = 1.0 / W_;
  router_backward(dlogits_, dgate_, L.logits, L.probs, L.topk_idx, L.route_counts, N, E, k, renormalize_,
                  float(aux_coef_ * loss_scale * f), float(z_coef_ * loss_scale), stream_);
  matmul_backward<T, float>(dmoe_x_, g + L.gate_w, (float*)nullptr, dlogits_, L.moe_in, w + L.gate_w, N, C, E, true,
                            stream_);
  if (L.noise_applied) {
    gate_noise_backward(dlogits_, L.noise_pre, L.eps, int64_t(N) * E, stream_);
    matmul_backward<T, float>(dmoe_x_, g + L.noise_w, (float*)nullptr, dlogits_, L.moe_in, w + L.noise_w, N, C, E,
                              true, stream_);
  }
}

template <class T>
double GptCuda<T>::aux_loss() const {
  double s = 0;
  for (const MoeLayerStats& st : moe_stats_) s += aux_coef_ * st.aux + z_coef_ * st.z;
  return s;
}

template <class T>
float GptCuda<T>::step(double lr, int64_t t) {
  double* sq = norm_scratch_ + grad_norm_scratch();
  if (W_ == 1) {
    grad_norm_squared(sq, norm_scratch_, grads_, table_.total(), stream_);
    grad_clip_mult(clip_, clip_ + 1, sq, 1, oc_.grad_clip, stream_);
  } else {
    // Replicated gradients summed over ranks (each rank's share is already scaled by 1/W); then the
    // norm: replicated tensors once (identical everywhere), experts summed over ranks.
    for (const auto& [b, e] : table_.replicated_ranges()) comm_->all_reduce_sum(grads_ + b, e - b, DType::f32, nullptr);
    grad_norm_squared(sq, norm_scratch_, grads_, static_cast<const ParamChunk*>(chunks_), num_chunks_, stream_);
    comm_->all_reduce_sum(sq + 1, 1, DType::f64, nullptr);
    grad_clip_mult(clip_, clip_ + 1, sq, 2, oc_.grad_clip, stream_);
  }
  bf16* copy = std::is_same<T, float>::value ? nullptr : reinterpret_cast<bf16*>(params_t_);
  adamw_step(params_, m_, v_, grads_, copy, static_cast<const ParamChunk*>(chunks_), num_chunks_, oc_, lr, t, clip_,
             Bf16Rounding::nearest, 0, stream_);
  float norm = 0;
  to_host(stream_, &norm, clip_ + 1, sizeof(float), "gradient norm");
  return norm;
}

template class GptCuda<float>;
template class GptCuda<bf16>;

SCMOE_CUDA_END
