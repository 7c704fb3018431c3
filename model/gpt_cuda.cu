// The dense GPT on the CUDA backend (see gpt_cuda.h): the same computation as GPT<T> (model/gpt.cpp)
// for model.arch dense, one kernel sequence per block, in the style of llm.c's train_gpt2.cu.
#include "model/gpt_cuda.h"

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
#include "kernels/cuda/gelu.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/norm.h"

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
  // parameter offsets
  size_t ln1_w, ln1_b = 0, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b = 0, fc_w, fc_b, fcp_w, fcp_b;
  // saved activations
  T *ln1 = nullptr, *qkv = nullptr, *atty = nullptr, *a = nullptr, *ln2 = nullptr, *h = nullptr, *g = nullptr;
  T *tmp = nullptr;  // attention projection / MLP output before the residual add
  float *mean1 = nullptr, *rstd1 = nullptr, *mean2 = nullptr, *rstd2 = nullptr;
  AttentionBuffers<T> att;
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
GptCuda<T>::GptCuda(const Config& cfg, const ParamTable& table, int B, cudaStream_t stream, int attention)
    : mc_(cfg.model), oc_(cfg.optim), table_(table), B_(B), Tn_(cfg.model.seq_len), C_(cfg.model.d_model),
      V_(cfg.model.vocab_size), F_(cfg.model.d_ff), N_(B * cfg.model.seq_len), stream_(stream) {
  SCMOE_CHECK(mc_.arch == "dense", "train.device cuda: model.arch " << mc_.arch
                                       << " is not on the CUDA backend yet (dense only); use train.device cpu");
  const bool rms = mc_.norm == "rmsnorm";
  layers_.resize(mc_.n_layer);
  for (int l = 0; l < mc_.n_layer; l++) {
    const std::string p = "blocks." + std::to_string(l);
    Layer& L = layers_[l];
    L.ln1_w = offset_of(table, p + ".ln1.weight");
    L.ln2_w = offset_of(table, p + ".ln2.weight");
    if (!rms) L.ln1_b = offset_of(table, p + ".ln1.bias"), L.ln2_b = offset_of(table, p + ".ln2.bias");
    L.qkv_w = offset_of(table, p + ".attn.qkv.weight"), L.qkv_b = offset_of(table, p + ".attn.qkv.bias");
    L.proj_w = offset_of(table, p + ".attn.proj.weight"), L.proj_b = offset_of(table, p + ".attn.proj.bias");
    L.fc_w = offset_of(table, p + ".mlp.fc.weight"), L.fc_b = offset_of(table, p + ".mlp.fc.bias");
    L.fcp_w = offset_of(table, p + ".mlp.proj.weight"), L.fcp_b = offset_of(table, p + ".mlp.proj.bias");
  }
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
  for (Layer& L : layers_) {
    L.ln1 = take<T>(NC, allocate), L.qkv = take<T>(3 * NC, allocate), L.atty = take<T>(NC, allocate);
    L.a = take<T>(NC, allocate), L.ln2 = take<T>(NC, allocate);
    L.h = take<T>(size_t(N_) * F_, allocate), L.g = take<T>(size_t(N_) * F_, allocate);
    L.mean1 = take<float>(N_, allocate), L.rstd1 = take<float>(N_, allocate);
    L.mean2 = take<float>(N_, allocate), L.rstd2 = take<float>(N_, allocate);
    L.att.saved = take<T>(as.saved, allocate), L.att.saved_f32 = take<float>(as.saved_f32, allocate);
  }
  att_scratch_ = take<T>(as.scratch, allocate);
  att_scratch_f32_ = take<float>(as.scratch_f32, allocate);
  for (Layer& L : layers_) L.att.scratch = att_scratch_, L.att.scratch_f32 = att_scratch_f32_, L.tmp = nullptr;
  T* tmp = take<T>(NC, allocate);
  for (Layer& L : layers_) L.tmp = tmp;
  lnf_out_ = take<T>(NC, allocate);
  lnf_mean_ = take<float>(N_, allocate), lnf_rstd_ = take<float>(N_, allocate);
  logits_ = take<T>(size_t(N_) * V_, allocate);
  losses_ = take<float>(N_, allocate), loss_ = take<float>(1, allocate), clip_ = take<float>(2, allocate);
  norm_scratch_ = take<double>(grad_norm_scratch() + 1, allocate);
  dresid_ = take<T>(NC, allocate), dnorm_ = take<T>(NC, allocate), datty_ = take<T>(NC, allocate);
  dqkv_ = take<T>(3 * NC, allocate);
  dh_ = take<T>(size_t(N_) * F_, allocate), dg_ = take<T>(size_t(N_) * F_, allocate);
  workspace_bytes_ = std::max({norm_backward_workspace_bytes(N_, C_), encoder_backward_workspace_bytes(B_, Tn_, V_),
                               bias_backward_workspace_bytes(N_, std::max(3 * C_, F_))});
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
float GptCuda<T>::forward(const int32_t* inputs, const int32_t* targets, float grad_scale) {
  const bool rms = mc_.norm == "rmsnorm";
  const int N = N_, C = C_, H = mc_.n_head;
  const AttentionPath path = AttentionPath(attention_path_);
  const T* w = params_t_;
  to_device(stream_, inputs_, inputs, N * sizeof(int32_t), "input tokens");
  encoder_forward(resid_[0], inputs_, w + offset_of(table_, "wte"), w + offset_of(table_, "wpe"), B_, Tn_, C,
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
    matmul_forward(L.h, L.ln2, w + L.fc_w, w + L.fc_b, N, C, F_, stream_);
    gelu_forward(L.g, L.h, int64_t(N) * F_, stream_);
    matmul_forward(L.tmp, L.g, w + L.fcp_w, w + L.fcp_b, N, F_, C, stream_);
    add(resid_[l + 1], L.a, L.tmp, int64_t(N) * C, stream_);
  }
  const T* xf = resid_[mc_.n_layer];
  const size_t lnf_w = offset_of(table_, "ln_f.weight");
  if (rms) rmsnorm_forward(lnf_out_, lnf_rstd_, xf, w + lnf_w, N, C, stream_);
  else layernorm_forward(lnf_out_, lnf_mean_, lnf_rstd_, xf, w + lnf_w, w + offset_of(table_, "ln_f.bias"), N, C,
                         stream_);
  matmul_forward(logits_, lnf_out_, w + offset_of(table_, "wte"), (const T*)nullptr, N, C, V_, stream_);
  grad_scale_ = 0;
  if (!targets) return 0.f;
  for (int i = 0; i < N; i++)
    SCMOE_CHECK(targets[i] >= 0 && targets[i] < V_, "target token " << targets[i] << " outside the vocabulary");
  to_device(stream_, targets_, targets, N * sizeof(int32_t), "target tokens");
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
  const size_t wte = offset_of(table_, "wte"), lnf_w = offset_of(table_, "ln_f.weight");
  matmul_backward<T, float>(dnorm_, g + wte, nullptr, logits_, lnf_out_, w + wte, N, C, V_, false, stream_);
  if (rms)
    rmsnorm_backward(dresid_, g + lnf_w, dnorm_, resid_[mc_.n_layer], w + lnf_w, lnf_rstd_, N, C, false, workspace_,
                     workspace_bytes_, stream_);
  else {
    const size_t lnf_b = offset_of(table_, "ln_f.bias");
    layernorm_backward(dresid_, g + lnf_w, g + lnf_b, dnorm_, resid_[mc_.n_layer], w + lnf_w, lnf_mean_, lnf_rstd_,
                       N, C, false, workspace_, workspace_bytes_, stream_);
  }
  for (int l = mc_.n_layer - 1; l >= 0; l--) {
    Layer& L = layers_[l];
    // dresid holds dL/d(out) = dL/d(a) through the residual + dL/d(mlp output)
    matmul_backward<T, float>(dg_, g + L.fcp_w, g + L.fcp_b, dresid_, L.g, w + L.fcp_w, N, F_, C, false, stream_);
    gelu_backward(dh_, L.h, dg_, int64_t(N) * F_, stream_);
    matmul_backward<T, float>(dnorm_, g + L.fc_w, g + L.fc_b, dh_, L.ln2, w + L.fc_w, N, C, F_, false, stream_);
    if (rms)
      rmsnorm_backward(dresid_, g + L.ln2_w, dnorm_, L.a, w + L.ln2_w, L.rstd2, N, C, true, workspace_,
                       workspace_bytes_, stream_);
    else
      layernorm_backward(dresid_, g + L.ln2_w, g + L.ln2_b, dnorm_, L.a, w + L.ln2_w, L.mean2, L.rstd2, N, C, true,
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
  }
  encoder_backward(g + wte, g + offset_of(table_, "wpe"), dresid_, inputs_, B_, Tn_, C_, V_, workspace_,
                   workspace_bytes_, stream_);
  grad_scale_ = 0;  // the dlogits buffer is consumed
}

template <class T>
float GptCuda<T>::step(double lr, int64_t t) {
  grad_norm_squared(norm_scratch_ + grad_norm_scratch(), norm_scratch_, grads_, table_.total(), stream_);
  grad_clip_mult(clip_, clip_ + 1, norm_scratch_ + grad_norm_scratch(), 1, oc_.grad_clip, stream_);
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
