// The CUDA backend: the same members as the CPU backend (kernels/cpu/backend.h, which lists what a
// backend supplies), with the CUDA kernels of kernels/cuda/ behind them, all on the compute stream.
//   types   T = float or bf16 (weights, activations); G = float (master weights, gradients, AdamW
//           state); S = float (statistics); Acc = float (losses, router means, norms).
//   memory  device memory (named allocations: running out says what and how much), pinned host memory
//           for offloaded experts, copies in the compute stream's order.
//   streams non-blocking CUDA streams (the communication stream at the device's highest priority),
//           events, host functions; every call through kernels/cuda/runtime.h, so this header runs
//           natively and on the SIMT emulation's asynchronous runtime alike.
#pragma once
#include <algorithm>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "core/check.h"
#include "core/expert_link.h"
#include "core/stream.h"
#include "kernels/backend_types.h"
#include "kernels/cpu/permute.h"
#include "kernels/cuda/adamw.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/crossentropy.h"
#include "kernels/cuda/device_memory.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/encoder.h"
#include "kernels/cuda/expert_link.h"
#include "kernels/cuda/gates.h"
#include "kernels/cuda/gelu.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/norm.h"
#include "kernels/cuda/permute.h"
#include "kernels/cuda/router.h"
#include "kernels/cuda/runtime.h"
#include "kernels/cuda/stream.h"

SCMOE_CUDA_BEGIN

template <class T_>
class Cuda {
 public:
  using T = T_;
  using G = float;
  using S = float;
  using Acc = float;
  using Host = float;
  static constexpr bool kHostMemory = false;
  static const char* name() { return "cuda"; }

  // Test hook: the attention path (-1 auto: flash from seq_len 2048 on; 0 GEMM + softmax; 1 flash).
  static int& attention_override() {
    static int path = -1;
    return path;
  }

  // ---- memory ----------------------------------------------------------------------------------------
  // Named device memory, zero-filled (a device that runs padding rows needs them finite).
  template <class X>
  class Array {
   public:
    Array() = default;
    Array(size_t n, const std::string& what) : a_(n, what) {
      if (!n) return;
      memset_async(a_.get(), 0, n * sizeof(X), nullptr);
      stream_synchronize(nullptr);  // the legacy stream does not order non-blocking streams' work
    }
    X* get() const { return a_.get(); }
    size_t size() const { return a_.size(); }

   private:
    DeviceArray<X> a_;
  };
  // Page-locked host memory (offloaded experts: the copy engine reads it at the link's full rate).
  template <class X>
  class PinnedArray {
   public:
    PinnedArray() = default;
    PinnedArray(size_t n, const std::string& what)
        : p_(static_cast<X*>(host_pinned_alloc(n * sizeof(X), what))), n_(n) {}
    X* get() const { return p_.get(); }
    size_t size() const { return n_; }

   private:
    struct Free {
      void operator()(X* p) const { host_pinned_free(p); }
    };
    std::unique_ptr<X, Free> p_;
    size_t n_ = 0;
  };
  template <class X>
  void upload(X* dst, const X* src, size_t n) {
    memcpy_async(dst, src, n * sizeof(X), CopyKind::host_to_device, s_);
  }
  template <class X>
  void upload_as(T* dst, const X* src, size_t n) {
    std::vector<T> t(n);
    for (size_t i = 0; i < n; i++) t[i] = T(float(src[i]));
    upload(dst, t.data(), n);
  }
  // A host read: waits for the compute stream's work up to here.
  template <class X>
  void download(X* dst, const X* src, size_t n) {
    memcpy_async(dst, src, n * sizeof(X), CopyKind::device_to_host, s_);
    stream_synchronize(s_);
  }
  const Host* host_view(const T* p, size_t n, std::vector<Host>& scratch) {
    scratch.resize(n);
    if constexpr (std::is_same<T, float>::value) {
      download(scratch.data(), p, n);
    } else {
      std::vector<T> t(n);
      download(t.data(), p, n);
      for (size_t i = 0; i < n; i++) scratch[i] = float(t[i]);
    }
    return scratch.data();
  }
  void copy_on(Stream* s, void* dst, const void* src, size_t bytes) {
    SCMOE_CHECK(s, "cuda backend: a device copy needs a stream");
    memcpy_async(dst, src, bytes, CopyKind::device_to_device, static_cast<cudaStream_t>(s->native_handle()));
  }
  // The model's start-up estimate, quoted by every later out-of-device-memory error (device_memory.h).
  static void record_memory_estimate(size_t bytes, const std::string& breakdown) {
    set_memory_estimate(bytes, breakdown);
  }
  // Sizes the scratch the kernels need (workspaces of the deterministic reductions) for these shapes.
  void reserve(const KernelShapes& sh) {
    const int N = sh.B * sh.Tn, hd = sh.C / std::max(sh.H, 1);
    const int path = attention_override();
    flash_ = path < 0 ? sh.Tn >= 2048 && flash_attention_supports(hd) : path == 1;
    SCMOE_CHECK(!flash_ || flash_attention_supports(hd),
                "flash attention has no kernel for head size " << hd << " (model.d_model / model.n_head)");
    SCMOE_CHECK(sh.E <= kRouterMaxExperts, "the CUDA router takes at most " << kRouterMaxExperts
                                                                            << " experts, moe.num_experts is " << sh.E);
    size_t ws = std::max({norm_backward_workspace_bytes(N, sh.C), encoder_backward_workspace_bytes(sh.B, sh.Tn, sh.V),
                          bias_backward_workspace_bytes(N, std::max(3 * sh.C, sh.F))});
    if (sh.E > 0)
      ws = std::max({ws, router_forward_workspace_bytes(N, sh.E), dispatch_workspace_bytes(N, sh.k, sh.E)});
    workspace_ = DeviceArray<char>(ws, "kernel workspace");
    norm_scratch_ = DeviceArray<double>(grad_norm_scratch(), "gradient norm scratch");
  }

  // ---- streams ---------------------------------------------------------------------------------------
  Cuda() : compute_(make_stream("compute", false)), s_(static_cast<cudaStream_t>(compute_->native_handle())) {}
  Stream& compute() { return *compute_; }
  std::unique_ptr<Stream> make_side_stream(const std::string& name, bool high_priority) {
    return make_stream(name, high_priority);
  }
  std::unique_ptr<Event> make_event(bool timing = false) { return cuda::make_event(timing); }
  void host_wait(Event& e) { e.synchronize(); }
  void host_wait(Event& e, Stream&) { e.synchronize(); }
  void synchronize() { compute_->synchronize(); }
  // Collectives on the compute stream's buffers are issued on it (NCCL), or run in its order (a host
  // transport on the emulated device).
  Stream* collective_stream() { return compute_.get(); }
  // Expert offloading's link: pinned host memory -> device slots over a copy stream (the real link;
  // a simulated bandwidth is the CPU backend's).
  std::unique_ptr<ExpertLink> make_expert_link(double /*gb_s*/, double /*latency_us*/) {
    return make_cuda_expert_link(s_);
  }

  // ---- dense layers ----------------------------------------------------------------------------------
  void add(T* out, const T* a, const T* b, int64_t n) { cuda::add(out, a, b, n, s_); }
  void add_inplace(T* y, const T* x, int64_t n) { cuda::add_inplace(y, x, n, s_); }
  void copy(T* y, const T* x, int64_t n) { cuda::copy(y, x, n, s_); }
  template <class X>
  void zero(X* y, size_t n) {
    memset_async(y, 0, n * sizeof(X), s_);
  }
  void convert_weights(T* dst, const G* src, size_t n) { convert_from_f32(dst, src, int64_t(n), s_); }
  void encoder_forward(T* out, const int32_t* idx, const T* wte, const T* wpe, int B, int Tn, int C) {
    cuda::encoder_forward(out, idx, wte, wpe, B, Tn, C, s_);
  }
  void encoder_backward(G* dwte, G* dwpe, const T* dout, const int32_t* idx, int B, int Tn, int C, int V) {
    cuda::encoder_backward(dwte, dwpe, dout, idx, B, Tn, C, V, workspace_.get(), workspace_.bytes(), s_);
  }
  void matmul_forward(T* out, const T* inp, const T* W, const T* bias, int N, int IC, int OC) {
    cuda::matmul_forward(out, inp, W, bias, N, IC, OC, s_);
  }
  void matmul_backward(T* dinp, G* dW, G* dbias, const T* dout, const T* inp, const T* W, int N, int IC, int OC,
                       bool accumulate_dinp) {
    cuda::matmul_backward<T, G>(dinp, dW, dbias, dout, inp, W, N, IC, OC, accumulate_dinp, s_);
  }
  void grouped_matmul_forward(T* out, const T* inp, const T* W, const T* bias, size_t stride, const GroupRows& rows,
                              int IC, int OC) {
    cuda::matmul_forward_grouped(out, inp, W, bias, int64_t(stride), rows, IC, OC, s_);
  }
  void grouped_matmul_backward(T* dinp, G* dW, G* dbias, const T* dout, const T* inp, const T* W, size_t stride,
                               const GroupRows& rows, int IC, int OC, bool accumulate_dinp) {
    cuda::matmul_backward_grouped<T, G>(dinp, dW, dbias, dout, inp, W, int64_t(stride), rows, IC, OC, accumulate_dinp,
                                        s_);
  }
  void gelu_forward(T* out, const T* inp, int64_t n) { cuda::gelu_forward(out, inp, n, s_); }
  void gelu_backward(T* dinp, const T* inp, const T* dout, int64_t n) { cuda::gelu_backward(dinp, inp, dout, n, s_); }
  void norm_forward(T* out, S* mean, S* rstd, const T* inp, const T* w, const T* b, int N, int C, bool rms) {
    if (rms) cuda::rmsnorm_forward(out, rstd, inp, w, N, C, s_);
    else cuda::layernorm_forward(out, mean, rstd, inp, w, b, N, C, s_);
  }
  void norm_backward(T* dinp, G* dw, G* db, const T* dout, const T* inp, const T* w, const S* mean, const S* rstd,
                     int N, int C, bool rms, bool accumulate_dinp) {
    if (rms)
      cuda::rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, C, accumulate_dinp, workspace_.get(), workspace_.bytes(),
                             s_);
    else
      cuda::layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C, accumulate_dinp, workspace_.get(),
                               workspace_.bytes(), s_);
  }
  void residual_norm_forward(T* resid, T* out, S* mean, S* rstd, const T* a, const T* b, const T* w, const T* bias,
                             int N, int C, bool rms) {
    if (rms) fused_residual_rmsnorm_forward(resid, out, rstd, a, b, w, N, C, s_);
    else fused_residual_layernorm_forward(resid, out, mean, rstd, a, b, w, bias, N, C, s_);
  }
  AttentionSizes attention_sizes(int B, int Tn, int C, int H) const {
    const AttentionBufferSizes z = attention_buffer_sizes(path(), B, Tn, C, H);
    AttentionSizes s;
    s.saved = z.saved, s.saved_s = z.saved_f32, s.scratch = z.scratch, s.scratch_s = z.scratch_f32;
    return s;
  }
  void attention_forward(T* out, const T* qkv, const scmoe::AttentionBuffers<T, S>& b, int B, int Tn, int C, int H) {
    cuda::attention_forward(path(), out, qkv, buffers(b), B, Tn, C, H, s_);
  }
  void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const scmoe::AttentionBuffers<T, S>& b,
                          int B, int Tn, int C, int H) {
    cuda::attention_backward(path(), dqkv, dout, qkv, out, buffers(b), B, Tn, C, H, s_);
  }
  void attention_decode(T* out, S* att, const T* q, const T* k, const T* v, int Tk, int C, int H) {
    cuda::attention_decode(out, att, q, k, v, Tk, C, H, s_);
  }
  void crossentropy(T* logits, S* losses, const int32_t* targets, int N, int V, double grad_scale, bool want_grad,
                    Acc* mean) {
    crossentropy_forward_backward(logits, losses, targets, N, V, float(grad_scale), want_grad, s_);
    crossentropy_mean_loss(mean, losses, N, s_);
  }
  void cg1_forward(T* out, S* coef, const T* z, const T* se, int N, int C) { cuda::cg1_forward(out, coef, z, se, N, C, s_); }
  void cg1_backward(T* dse, T* dz, const T* dout, const S* coef, const T* se, int N, int C) {
    cuda::cg1_backward(dse, dz, dout, coef, se, N, C, s_);
  }
  void cg2_forward(T* out, S* alpha, const T* z, const T* se, const T* moe, int N, int C) {
    cuda::cg2_forward(out, alpha, z, se, moe, N, C, s_);
  }
  void cg2_backward(T* dse, T* dmoe, T* dz, const T* dout, const S* alpha, const T* se, const T* moe, int N, int C) {
    cuda::cg2_backward(dse, dmoe, dz, dout, alpha, se, moe, N, C, s_);
  }

  // ---- router ----------------------------------------------------------------------------------------
  void router_forward(const T* logits, int N, const RouterSpec& r, S* probs, int32_t* idx, S* gate, Acc* pmean,
                      int64_t* counts, int32_t* seq_counts, Acc* losses) {
    cuda::router_forward(logits, N, r, probs, idx, gate, pmean, counts, seq_counts, losses, workspace_.get(), s_);
  }
  void router_backward(T* dlogits, const S* dgate, const T* logits, const S* probs, const int32_t* idx,
                       const int64_t* counts, const int32_t* seq_counts, int N, const RouterSpec& r,
                       const RouterGradScales& sc) {
    cuda::router_backward(dlogits, dgate, logits, probs, idx, counts, seq_counts, N, r, sc, s_);
  }
  void expert_bias_update(float* bias, int64_t* load, int E, double rate, bool center) {
    cuda::expert_bias_update(bias, load, E, rate, center, s_);
  }
  void add_counts(int64_t* load, const int64_t* counts, int E) { cuda::add_counts(load, counts, E, s_); }
  void gate_noise_forward(T* logits, const T* pre, const S* eps, int64_t n) { cuda::gate_noise_forward(logits, pre, eps, n, s_); }
  void gate_noise_backward(T* dlogits, const T* pre, const S* eps, int64_t n) {
    cuda::gate_noise_backward(dlogits, pre, eps, n, s_);
  }
  void router_stats_pack(double* buf, const int64_t* counts, const Acc* pmean, const Acc* losses, int N, int64_t S,
                         int E) {
    cuda::router_stats_pack(buf, counts, pmean, losses, N, S, E, s_);
  }
  void router_stats_unpack(int64_t* counts, Acc* losses, const double* buf, int64_t N_global, int64_t S_global, int k,
                           int E) {
    cuda::router_stats_unpack(counts, losses, buf, N_global, S_global, k, E, s_);
  }

  // ---- dispatch --------------------------------------------------------------------------------------
  void route_sort(const int32_t* idx, int N, int k, int E, int32_t* send_pos, int64_t* bucket) {
    cuda::route_sort(idx, N, k, E, send_pos, bucket, workspace_.get(), s_);
  }
  void fixed_capacity_slots(const int32_t* idx, int N, int k, int E, int64_t capacity, int64_t chunk_rows,
                            int32_t* send_pos, int64_t* bucket) {
    cuda::fixed_capacity_slots(idx, N, k, E, capacity, chunk_rows, send_pos, bucket, workspace_.get(), s_);
  }
  void admit_rows_fixed(const int64_t* recv_bucket, const int64_t* send_bucket, int64_t assignments, int W, int El,
                        int E, int k, int64_t capacity, int64_t chunk_rows, int P, int32_t* expert_row,
                        int64_t* seg_counts, int64_t* dropped) {
    cuda::admit_rows_fixed(recv_bucket, send_bucket, assignments, W, El, E, k, capacity, chunk_rows, P, expert_row,
                           seg_counts, dropped, s_);
  }
  void scatter_rows(T* dst, const T* src, const int32_t* map, int64_t rows, int C) {
    cuda::scatter_rows(dst, src, map, rows, C, s_);
  }
  void gather_rows(T* dst, const T* src, const int32_t* map, int64_t rows, int C) {
    cuda::gather_rows(dst, src, map, rows, C, s_);
  }
  void permute_forward(T* xe, const T* x, const int32_t* pos, int N, int k, int C) {
    cuda::permute_forward(xe, x, pos, N, k, C, s_);
  }
  void permute_backward(T* dx, const T* dxe, const int32_t* pos, int N, int k, int C, bool accumulate) {
    cuda::permute_backward(dx, dxe, pos, N, k, C, accumulate, s_);
  }
  void combine_forward(T* y, const T* ye, const S* gate, const int32_t* pos, int N, int k, int C) {
    cuda::combine_forward(y, ye, gate, pos, N, k, C, s_);
  }
  void combine_backward(T* dye, S* dgate, const T* dy, const T* ye, const S* gate, const int32_t* pos, int N, int k,
                        int C) {
    cuda::combine_backward(dye, dgate, dy, ye, gate, pos, N, k, C, s_);
  }

  // ---- optimizer -------------------------------------------------------------------------------------
  struct ParamPlan {
    DeviceArray<ParamChunk> chunks;
    int count = 0;
  };
  ParamPlan make_param_plan(const ParamTable& table) {
    const std::vector<ParamChunk> c = param_chunks(table);
    ParamPlan p;
    p.chunks = DeviceArray<ParamChunk>(c.size(), "optimizer chunk table");
    p.chunks.upload(c.data(), c.size());
    p.count = int(c.size());
    return p;
  }
  void grad_norm_squared(double* out_sq, const G* grads, const ParamPlan& plan) {
    cuda::grad_norm_squared(out_sq, norm_scratch_.get(), grads, plan.chunks.get(), plan.count, s_);
  }
  void grad_clip_mult(Acc* mult, Acc* norm, const double* sq, int n_sq, double clip) {
    cuda::grad_clip_mult(mult, norm, sq, n_sq, clip, s_);
  }
  void adamw_step(G* params, G* m, G* v, const G* grads, T* weights, const ParamPlan& plan, const OptimConfig& cfg,
                  double lr, int64_t t, const Acc* mult) {
    bf16* copy = nullptr;
    if constexpr (!std::is_same<T, float>::value) copy = reinterpret_cast<bf16*>(weights);
    cuda::adamw_step(params, m, v, grads, copy, plan.chunks.get(), plan.count, cfg, lr, t, mult, Bf16Rounding::nearest,
                     0, s_);
  }

 private:
  AttentionPath path() const { return flash_ ? AttentionPath::flash : AttentionPath::gemm_softmax; }
  static cuda::AttentionBuffers<T> buffers(const scmoe::AttentionBuffers<T, S>& b) {
    cuda::AttentionBuffers<T> c;
    c.saved = b.saved, c.saved_f32 = b.saved_s, c.scratch = b.scratch, c.scratch_f32 = b.scratch_s;
    return c;
  }
  std::unique_ptr<Stream> compute_;
  cudaStream_t s_;
  DeviceArray<char> workspace_;
  DeviceArray<double> norm_scratch_;
  bool flash_ = false;
};

SCMOE_CUDA_END
