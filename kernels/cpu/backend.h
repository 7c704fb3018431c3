// The CPU backend: what the model (model/*.h), written once, needs from a backend, with the CPU
// reference kernels behind it. Its twin is kernels/cuda/backend.h; a member here has the same name,
// arguments and meaning there. What a backend supplies:
//   types    T (weights and activations), G (gradients, master weights, optimizer state), S (per-row
//            statistics saved for the backward: norm mean/rstd, router probabilities and gates,
//            combine coefficients), Acc (small results the host reads: losses, router means, norms);
//   memory   Array<X> (owning, zero-filled), upload/download (host <-> backend memory, in the compute
//            stream's order), copy_on(stream) for exchanges that are local copies;
//   streams  the compute stream, side streams (communication, copies), events, host_wait;
//   kernels  every op of the forward and backward, the MoE dispatch, the optimizer, on the compute
//            stream.
// On the CPU everything is host memory, the compute stream runs work inline on the calling thread and
// side streams are worker threads (core/stream.h), so the same schedule code overlaps here too.
#pragma once
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/check.h"
#include "core/expert_link.h"
#include "core/host_memory.h"
#include "core/stream.h"
#include "kernels/backend_types.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/crossentropy.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/encoder.h"
#include "kernels/cpu/gates.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/permute.h"
#include "kernels/cpu/router.h"

namespace scmoe {

template <class T_>
class Cpu {
 public:
  using T = T_;
  using G = T_;
  using S = T_;
  using Acc = double;
  using Host = T_;  // what the host reads activations (logits) as
  static constexpr bool kHostMemory = true;
  static const char* name() { return "cpu"; }

  // ---- memory ----------------------------------------------------------------------------------------
  // An owning, 64-byte aligned, zero-filled array.
  template <class X>
  class Array;
  template <class X>
  using PinnedArray = Array<X>;  // host memory the expert link copies from (host memory anyway here)
  template <class X>
  class Array {
   public:
    Array() = default;
    Array(Array&&) noexcept = default;
    Array& operator=(Array&&) noexcept = default;
    Array(size_t n, const std::string& what) : n_(n) {
      if (n == 0) return;
      check_host_allocation(n, sizeof(X), what);  // before Linux's overcommit lets it "succeed"
      const size_t bytes = (n * sizeof(X) + 63) / 64 * 64;
      p_.reset(static_cast<X*>(std::aligned_alloc(64, bytes)));
      SCMOE_CHECK(p_, "out of host memory allocating " << what << " (" << bytes / 1048576.0 << " MiB)");
      std::memset(static_cast<void*>(p_.get()), 0, bytes);
    }
    X* get() const { return p_.get(); }
    size_t size() const { return n_; }

   private:
    struct Free {
      void operator()(X* p) const { std::free(p); }
    };
    std::unique_ptr<X, Free> p_;
    size_t n_ = 0;
  };
  template <class X>
  void upload(X* dst, const X* src, size_t n) {
    if (n && dst != src) std::memcpy(static_cast<void*>(dst), src, n * sizeof(X));
  }
  template <class X>
  void download(X* dst, const X* src, size_t n) {
    if (n && dst != src) std::memcpy(static_cast<void*>(dst), src, n * sizeof(X));
  }
  // Upload with a conversion to T where the host holds another type (weights from fp32 values).
  template <class X>
  void upload_as(T* dst, const X* src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = T(src[i]);
  }
  // Host view of n activations: the buffer itself here (the CUDA backend copies into `scratch`).
  const Host* host_view(const T* p, size_t, std::vector<Host>&) { return p; }
  // A copy in `s`'s order (null: now, on this thread).
  void copy_on(Stream* s, void* dst, const void* src, size_t bytes) {
    if (!bytes || dst == src) return;
    if (s) s->enqueue([=] { std::memmove(dst, src, bytes); });
    else std::memmove(dst, src, bytes);
  }
  // Host allocations name themselves when they fail; only a device's out-of-memory message quotes the
  // model's start-up estimate.
  static void record_memory_estimate(size_t /*bytes*/, const std::string& /*breakdown*/) {}
  void reserve(const KernelShapes&) {}  // the CPU kernels need no scratch of the backend's

  // ---- streams ---------------------------------------------------------------------------------------
  Cpu() : compute_(make_cpu_stream("compute", false)) {}
  Stream& compute() { return *compute_; }
  std::unique_ptr<Stream> make_side_stream(const std::string& name, bool /*high_priority*/) {
    return make_cpu_stream(name, true);
  }
  std::unique_ptr<Event> make_event(bool /*timing*/ = false) { return make_cpu_event(); }
  // The host waits for e, yield-spinning (see make_cpu_stream: a sleeping compute thread wakes late).
  void host_wait(Event& e) {
    while (!e.query()) std::this_thread::yield();
  }
  void synchronize() { compute_->synchronize(); }
  // Expert offloading's host-to-device link: a copy thread, optionally a simulated bandwidth.
  std::unique_ptr<ExpertLink> make_expert_link(double gb_s, double latency_us) {
    return std::make_unique<HostLink>(gb_s, latency_us);
  }
  // Where collectives on buffers the compute stream writes are issued: null here (the compute stream
  // runs inline, so they run now on the calling thread and their errors surface at once).
  Stream* collective_stream() { return nullptr; }
  // The host waits for e, recorded on s; errors of s's work surface here.
  void host_wait(Event& e, Stream& s) {
    host_wait(e);
    s.synchronize();
  }

  // ---- dense layers ----------------------------------------------------------------------------------
  void add(T* out, const T* a, const T* b, int64_t n) { cpu::add(out, a, b, n); }
  void add_inplace(T* y, const T* x, int64_t n) { cpu::add_inplace(y, x, n); }
  void copy(T* y, const T* x, int64_t n) { cpu::copy(y, x, n); }
  template <class X>
  void zero(X* y, size_t n) {
    if (n) std::memset(static_cast<void*>(y), 0, n * sizeof(X));
  }
  void convert_weights(T* dst, const G* src, size_t n) { cpu::copy(dst, src, int64_t(n)); }
  void encoder_forward(T* out, const int32_t* idx, const T* wte, const T* wpe, int B, int Tn, int C) {
    cpu::encoder_forward(out, idx, wte, wpe, B, Tn, C);
  }
  void encoder_backward(G* dwte, G* dwpe, const T* dout, const int32_t* idx, int B, int Tn, int C, int /*V*/) {
    cpu::encoder_backward(dwte, dwpe, dout, idx, B, Tn, C);
  }
  void matmul_forward(T* out, const T* inp, const T* W, const T* bias, int N, int IC, int OC) {
    cpu::matmul_forward(out, inp, W, bias, N, IC, OC);
  }
  void matmul_backward(T* dinp, G* dW, G* dbias, const T* dout, const T* inp, const T* W, int N, int IC, int OC,
                       bool accumulate_dinp) {
    cpu::matmul_backward(dinp, dW, dbias, dout, inp, W, N, IC, OC, accumulate_dinp);
  }
  // Group g: rows of `rows` through W + g * stride (and bias + g * stride when bias is given).
  void grouped_matmul_forward(T* out, const T* inp, const T* W, const T* bias, size_t stride, const GroupRows& rows,
                              int IC, int OC) {
    for (int g = 0; g < rows.groups; g++)
      if (rows.size(g) > 0)
        cpu::matmul_forward(out + rows.first(g) * OC, inp + rows.first(g) * IC, W + g * stride,
                            bias ? bias + g * stride : nullptr, int(rows.size(g)), IC, OC);
  }
  void grouped_matmul_backward(T* dinp, G* dW, G* dbias, const T* dout, const T* inp, const T* W, size_t stride,
                               const GroupRows& rows, int IC, int OC, bool accumulate_dinp) {
    for (int g = 0; g < rows.groups; g++)
      if (rows.size(g) > 0)
        cpu::matmul_backward(dinp + rows.first(g) * IC, dW + g * stride, dbias ? dbias + g * stride : nullptr,
                             dout + rows.first(g) * OC, inp + rows.first(g) * IC, W + g * stride, int(rows.size(g)),
                             IC, OC, accumulate_dinp);
  }
  void gelu_forward(T* out, const T* inp, int64_t n) { cpu::gelu_forward(out, inp, n); }
  void gelu_backward(T* dinp, const T* inp, const T* dout, int64_t n) { cpu::gelu_backward(dinp, inp, dout, n); }
  // LayerNorm (mean, rstd saved) or RMSNorm (rms: rstd only, b and mean unused).
  void norm_forward(T* out, S* mean, S* rstd, const T* inp, const T* w, const T* b, int N, int C, bool rms) {
    if (rms) cpu::rmsnorm_forward(out, rstd, inp, w, N, C);
    else cpu::layernorm_forward(out, mean, rstd, inp, w, b, N, C);
  }
  void norm_backward(T* dinp, G* dw, G* db, const T* dout, const T* inp, const T* w, const S* mean, const S* rstd,
                     int N, int C, bool rms, bool accumulate_dinp) {
    if (rms) cpu::rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, C, accumulate_dinp);
    else cpu::layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C, accumulate_dinp);
  }
  // resid = a + b, then out = norm(resid) (one pass on CUDA; two here).
  void residual_norm_forward(T* resid, T* out, S* mean, S* rstd, const T* a, const T* b, const T* w, const T* bias,
                             int N, int C, bool rms) {
    cpu::add(resid, a, b, int64_t(N) * C);
    norm_forward(out, mean, rstd, resid, w, bias, N, C, rms);
  }
  AttentionSizes attention_sizes(int B, int Tn, int /*C*/, int H) const {
    AttentionSizes s;
    s.saved = size_t(B) * H * Tn * Tn;  // the softmax probabilities
    return s;
  }
  void attention_forward(T* out, const T* qkv, const AttentionBuffers<T, S>& b, int B, int Tn, int C, int H) {
    cpu::attention_forward(out, b.saved, qkv, B, Tn, C, H);
  }
  void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* /*out*/, const AttentionBuffers<T, S>& b,
                          int B, int Tn, int C, int H) {
    cpu::attention_backward(dqkv, dout, qkv, b.saved, B, Tn, C, H);
  }
  void attention_decode(T* out, S* att, const T* q, const T* k, const T* v, int Tk, int C, int H) {
    cpu::attention_decode(out, att, q, k, v, Tk, C, H);
  }
  // losses[n] and *mean (the mean over N); with want_grad the logits become dL/dlogits * grad_scale.
  void crossentropy(T* logits, S* losses, const int32_t* targets, int N, int V, double grad_scale, bool want_grad,
                    Acc* mean) {
    *mean = cpu::crossentropy_forward_backward(logits, losses, targets, N, V, T(grad_scale), want_grad);
  }
  void cg1_forward(T* out, S* coef, const T* z, const T* se, int N, int C) { cpu::cg1_forward(out, coef, z, se, N, C); }
  void cg1_backward(T* dse, T* dz, const T* dout, const S* coef, const T* se, int N, int C) {
    cpu::cg1_backward(dse, dz, dout, coef, se, N, C);
  }
  void cg2_forward(T* out, S* alpha, const T* z, const T* se, const T* moe, int N, int C) {
    cpu::cg2_forward(out, alpha, z, se, moe, N, C);
  }
  void cg2_backward(T* dse, T* dmoe, T* dz, const T* dout, const S* alpha, const T* se, const T* moe, int N, int C) {
    cpu::cg2_backward(dse, dmoe, dz, dout, alpha, se, moe, N, C);
  }

  // ---- router ----------------------------------------------------------------------------------------
  // losses[3] = {aux, z, seq aux} of this rank's tokens; pmean[E], counts[E] (assignments before
  // capacity), seq_counts[N/seq_len, E] when r.seq_len > 0 (see RouterSpec).
  void router_forward(const T* logits, int N, const RouterSpec& r, S* probs, int32_t* idx, S* gate, Acc* pmean,
                      int64_t* counts, int32_t* seq_counts, Acc* losses) {
    const cpu::RouterLosses L = cpu::router_forward(logits, N, r, probs, idx, gate, pmean, counts, seq_counts);
    losses[0] = L.aux, losses[1] = L.z, losses[2] = L.seq;
  }
  void router_backward(T* dlogits, const S* dgate, const T* logits, const S* probs, const int32_t* idx,
                       const int64_t* counts, const int32_t* seq_counts, int N, const RouterSpec& r,
                       const RouterGradScales& sc) {
    cpu::router_backward(dlogits, dgate, logits, probs, idx, counts, seq_counts, N, r, sc);
  }
  void expert_bias_update(float* bias, int64_t* load, int E, double rate, bool center) {
    cpu::expert_bias_update(bias, load, E, rate, center);
  }
  void add_counts(int64_t* load, const int64_t* counts, int E) { cpu::add_counts(load, counts, E); }
  void gate_noise_forward(T* logits, const T* pre, const S* eps, int64_t n) { cpu::gate_noise_forward(logits, pre, eps, n); }
  void gate_noise_backward(T* dlogits, const T* pre, const S* eps, int64_t n) {
    cpu::gate_noise_backward(dlogits, pre, eps, n);
  }
  void router_stats_pack(double* buf, const int64_t* counts, const Acc* pmean, const Acc* losses, int N, int64_t S,
                         int E) {
    cpu::router_stats_pack(buf, counts, pmean, losses, N, S, E);
  }
  void router_stats_unpack(int64_t* counts, Acc* losses, const double* buf, int64_t N_global, int64_t S_global, int k,
                           int E) {
    cpu::router_stats_unpack(counts, losses, buf, N_global, S_global, k, E);
  }

  // ---- dispatch --------------------------------------------------------------------------------------
  void route_sort(const int32_t* idx, int N, int k, int E, int32_t* send_pos, int64_t* bucket) {
    cpu::route_sort(idx, N, k, E, send_pos, bucket);
  }
  void fixed_capacity_slots(const int32_t* idx, int N, int k, int E, int64_t capacity, int64_t chunk_rows,
                            int32_t* send_pos, int64_t* bucket) {
    cpu::fixed_capacity_slots(idx, N, k, E, capacity, chunk_rows, send_pos, bucket);
  }
  // The fixed layout's admission (cpu::admit_rows_fixed); *dropped also counts the assignments this
  // rank did not send (send_bucket holds what it sent of its N*k).
  void admit_rows_fixed(const int64_t* recv_bucket, const int64_t* send_bucket, int64_t assignments, int W, int El,
                        int E, int k, int64_t capacity, int64_t chunk_rows, int P, int32_t* expert_row,
                        int64_t* seg_counts, int64_t* dropped) {
    std::vector<int64_t> offsets(size_t(P) * El + 1);
    int64_t sent = 0;
    for (int b = 0; b < E * k; b++) sent += send_bucket[b];
    *dropped = cpu::admit_rows_fixed(recv_bucket, W, El, k, capacity, chunk_rows, P, expert_row, seg_counts,
                                     offsets.data()) +
               (assignments - sent);
  }
  void scatter_rows(T* dst, const T* src, const int32_t* map, int64_t rows, int C) {
    cpu::scatter_rows(dst, src, map, rows, C);
  }
  void gather_rows(T* dst, const T* src, const int32_t* map, int64_t rows, int C) {
    cpu::gather_rows(dst, src, map, rows, C);
  }
  void permute_forward(T* xe, const T* x, const int32_t* pos, int N, int k, int C) {
    cpu::permute_forward(xe, x, pos, N, k, C);
  }
  void permute_backward(T* dx, const T* dxe, const int32_t* pos, int N, int k, int C, bool accumulate) {
    cpu::permute_backward(dx, dxe, pos, N, k, C, accumulate);
  }
  void combine_forward(T* y, const T* ye, const S* gate, const int32_t* pos, int N, int k, int C) {
    cpu::combine_forward(y, ye, gate, pos, N, k, C);
  }
  void combine_backward(T* dye, S* dgate, const T* dy, const T* ye, const S* gate, const int32_t* pos, int N, int k,
                        int C) {
    cpu::combine_backward(dye, dgate, dy, ye, gate, pos, N, k, C);
  }

  // ---- optimizer -------------------------------------------------------------------------------------
  using ParamPlan = std::vector<cpu::ParamRange>;
  ParamPlan make_param_plan(const ParamTable& table) { return cpu::param_ranges(table); }
  // out_sq[0..1] = squared gradient norms of the replicated and the expert tensors.
  void grad_norm_squared(double* out_sq, const G* grads, const ParamPlan& plan) {
    out_sq[0] = out_sq[1] = 0;
    cpu::grad_norm_squared(out_sq, grads, plan);
  }
  void grad_clip_mult(Acc* mult, Acc* norm, const double* sq, int n_sq, double clip) {
    cpu::grad_clip_mult(mult, norm, sq, n_sq, clip);
  }
  // weights: the T copy the forward reads, rewritten from the updated params (null when they are one).
  void adamw_step(G* params, G* m, G* v, const G* grads, T* /*weights*/, const ParamPlan& plan, const OptimConfig& cfg,
                  double lr, int64_t t, const Acc* mult) {
    cpu::adamw_step(params, m, v, grads, plan, cfg, lr, t, *mult);
  }

 private:
  std::unique_ptr<Stream> compute_;
};

}  // namespace scmoe
