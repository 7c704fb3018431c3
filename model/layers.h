// The dense building blocks: Linear, Norm (LayerNorm | RMSNorm), causal self-attention, the GELU MLP
// and a MoE layer's experts as one grouped MLP. Written once against a backend B (kernels/cpu/backend.h,
// kernels/cuda/backend.h): each layer binds to its tensors (model/architecture.h) in the weight and
// gradient buffers, asks the arena for the activations its backward needs, and runs forward/backward
// over N rows through B's kernels on the compute stream.
#pragma once
#include <cstdint>
#include <vector>

#include "core/arena.h"
#include "kernels/backend_types.h"
#include "model/architecture.h"

namespace scmoe {

// Views of the model's buffers: weights (T, what the forward reads) and gradients (G). `place` maps a
// tensor's table index to its offset in the weights buffer where that is laid out otherwise (routed
// experts kept in host memory when offloaded: kAbsent); null: the table's offsets.
template <class B>
struct ParamViews {
  static constexpr size_t kAbsent = ~size_t(0);
  const typename B::T* weights = nullptr;
  typename B::G* grads = nullptr;  // null: inference (no gradients)
  const std::vector<size_t>* place = nullptr;
  template <class X>
  X* at(X* base, const TensorRef& t) const {
    if (!base || !t.present()) return nullptr;
    const size_t off = place ? (*place)[t.index] : t.offset;
    return off == kAbsent ? nullptr : base + off;
  }
};

template <class B>
struct Linear {
  using T = typename B::T;
  using G = typename B::G;
  B* k = nullptr;
  int in = 0, out = 0;
  const T *w = nullptr, *b = nullptr;
  G *dw = nullptr, *db = nullptr;

  void bind(B& kernels, const LinearParams& p, const ParamViews<B>& v) {
    k = &kernels, in = p.in, out = p.out;
    w = v.at(v.weights, p.w), b = v.at(v.weights, p.b);
    dw = v.at(v.grads, p.w), db = v.at(v.grads, p.b);
  }
  void forward(T* y, const T* x, int N) const { k->matmul_forward(y, x, w, b, N, in, out); }
  void backward(T* dx, const T* dy, const T* x, int N, bool accumulate_dx) const {
    k->matmul_backward(dx, dw, db, dy, x, w, N, in, out, accumulate_dx);
  }
};

template <class B>
struct Norm {
  using T = typename B::T;
  using G = typename B::G;
  using S = typename B::S;
  B* k = nullptr;
  int C = 0;
  bool rms = false;
  const T *w = nullptr, *b = nullptr;
  G *dw = nullptr, *db = nullptr;
  S *mean = nullptr, *rstd = nullptr;  // per-row statistics saved by forward

  void bind(B& kernels, const NormParams& p, const ParamViews<B>& v) {
    k = &kernels, C = p.C, rms = p.rms;
    w = v.at(v.weights, p.w), b = v.at(v.weights, p.b);
    dw = v.at(v.grads, p.w), db = v.at(v.grads, p.b);
  }
  void alloc(Arena& a, int N) {
    mean = a.alloc<S>(N);
    rstd = a.alloc<S>(N);
  }
  void forward(T* y, const T* x, int N) { k->norm_forward(y, mean, rstd, x, w, b, N, C, rms); }
  // resid = a + r, then y = norm(resid), in one pass where the backend fuses them.
  void residual_forward(T* resid, T* y, const T* a, const T* r, int N) {
    k->residual_norm_forward(resid, y, mean, rstd, a, r, w, b, N, C, rms);
  }
  void backward(T* dx, const T* dy, const T* x, int N, bool accumulate_dx) {
    k->norm_backward(dx, dw, db, dy, x, w, mean, rstd, N, C, rms, accumulate_dx);
  }
};

// Scratch gradient buffers shared by all layers of a model (backward runs one layer at a time).
template <class B>
struct GradScratch {
  using T = typename B::T;
  T *dqkv = nullptr, *datty = nullptr, *dh = nullptr, *dg = nullptr, *dnorm = nullptr;
  T *du = nullptr, *dgate = nullptr;
  void alloc(Arena& a, int N, int C, int F) {
    du = a.alloc<T>((size_t)N * C);
    dgate = a.alloc<T>((size_t)N * 2);
    dqkv = a.alloc<T>((size_t)N * 3 * C);
    datty = a.alloc<T>((size_t)N * C);
    dh = a.alloc<T>((size_t)N * F);
    dg = a.alloc<T>((size_t)N * F);
    dnorm = a.alloc<T>((size_t)N * C);
  }
};

template <class B>
struct Attention {
  using T = typename B::T;
  using S = typename B::S;
  B* k = nullptr;
  int Bn = 0, Tn = 0, C = 0, H = 0;
  Linear<B> qkv, proj;
  T *qkv_out = nullptr, *atty = nullptr;
  AttentionBuffers<T, S> buf;  // what the backend's attention saves (and its scratch, shared)

  void bind(B& kernels, const AttentionParams& p, const ParamViews<B>& v) {
    k = &kernels, C = p.qkv.in, H = p.heads;
    qkv.bind(kernels, p.qkv, v), proj.bind(kernels, p.proj, v);
  }
  // scratch: shared by every layer (only live during one call); sized by the caller.
  void alloc(Arena& a, int B_, int T_, T* scratch, S* scratch_s) {
    Bn = B_, Tn = T_;
    const AttentionSizes s = k->attention_sizes(Bn, Tn, C, H);
    qkv_out = a.alloc<T>((size_t)Bn * Tn * 3 * C);
    atty = a.alloc<T>((size_t)Bn * Tn * C);
    buf.saved = a.alloc<T>(s.saved), buf.saved_s = a.alloc<S>(s.saved_s);
    buf.scratch = scratch, buf.scratch_s = scratch_s;
  }
  void forward(T* y, const T* x) {
    const int N = Bn * Tn;
    qkv.forward(qkv_out, x, N);
    k->attention_forward(atty, qkv_out, buf, Bn, Tn, C, H);
    proj.forward(y, atty, N);
  }
  // dx receives the gradient w.r.t. x (overwritten).
  void backward(T* dx, const T* dy, const T* x, GradScratch<B>& s) {
    const int N = Bn * Tn;
    proj.backward(s.datty, dy, atty, N, false);
    k->attention_backward(s.dqkv, s.datty, qkv_out, atty, buf, Bn, Tn, C, H);
    qkv.backward(dx, s.dqkv, x, N, false);
  }
};

template <class B>
struct MLP {
  using T = typename B::T;
  B* k = nullptr;
  int C = 0, F = 0, N = 0;
  Linear<B> fc, proj;
  T *h = nullptr, *g = nullptr;  // pre- and post-GELU hidden activations

  void bind(B& kernels, const MlpParams& p, const ParamViews<B>& v) {
    k = &kernels, C = p.fc.in, F = p.fc.out;
    fc.bind(kernels, p.fc, v), proj.bind(kernels, p.proj, v);
  }
  void alloc(Arena& a, int N_) {
    N = N_;
    h = a.alloc<T>((size_t)N * F);
    g = a.alloc<T>((size_t)N * F);
  }
  // Runs on the first `rows` rows.
  void forward(T* y, const T* x, int rows) {
    fc.forward(h, x, rows);
    k->gelu_forward(g, h, (int64_t)rows * F);
    proj.forward(y, g, rows);
  }
  void backward(T* dx, const T* dy, const T* x, int rows, GradScratch<B>& s, bool accumulate_dx) {
    proj.backward(s.dg, dy, g, rows, false);
    k->gelu_backward(s.dh, h, s.dg, (int64_t)rows * F);
    fc.backward(dx, s.dh, x, rows, accumulate_dx);
  }
};

// A MoE layer's local experts as one grouped MLP (Megatron-Core's GroupedMLP): expert le's weights at
// the first expert's + le * stride, its rows given by GroupRows. One grouped product per linear layer
// (a batched GEMM where every group runs the same number of rows), GELU over the groups' rows. The
// hidden activations are saved per row, so forward and backward must see the same rows.
template <class B>
struct ExpertMLPs {
  using T = typename B::T;
  using G = typename B::G;
  B* k = nullptr;
  int C = 0, F = 0, count = 0;
  size_t stride = 0;
  const T *w1 = nullptr, *b1 = nullptr, *w2 = nullptr, *b2 = nullptr;
  G *dw1 = nullptr, *db1 = nullptr, *dw2 = nullptr, *db2 = nullptr;

  void bind(B& kernels, const ExpertParams& p, const ParamViews<B>& v) {
    k = &kernels, C = p.first.fc.in, F = p.first.fc.out, count = p.count, stride = p.stride;
    w1 = v.at(v.weights, p.first.fc.w), b1 = v.at(v.weights, p.first.fc.b);
    w2 = v.at(v.weights, p.first.proj.w), b2 = v.at(v.weights, p.first.proj.b);
    dw1 = v.at(v.grads, p.first.fc.w), db1 = v.at(v.grads, p.first.fc.b);
    dw2 = v.at(v.grads, p.first.proj.w), db2 = v.at(v.grads, p.first.proj.b);
  }
  // ye = MLP_g(xe) on each group's rows; h, g: the hidden activations of those rows ([rows, F]).
  void forward(T* ye, const T* xe, T* h, T* g, const GroupRows& rows) {
    each(rows, [&](const GroupRows& r, int64_t first, int64_t n, size_t w) {
      k->grouped_matmul_forward(h, xe, w1 + w, b1 + w, stride, r, C, F);
      k->gelu_forward(g + first * F, h + first * F, n * F);
      k->grouped_matmul_forward(ye, g, w2 + w, b2 + w, stride, r, F, C);
    });
  }
  // dxe overwritten; weight gradients accumulated. dh, dg: scratch of the hidden size.
  void backward(T* dxe, const T* dye, const T* xe, const T* h, const T* g, T* dh, T* dg, const GroupRows& rows) {
    each(rows, [&](const GroupRows& r, int64_t first, int64_t n, size_t w) {
      k->grouped_matmul_backward(dg, dw2 + w, db2 + w, dye, g, w2 + w, stride, r, F, C, false);
      k->gelu_backward(dh + first * F, h + first * F, dg + first * F, n * F);
      k->grouped_matmul_backward(dxe, dw1 + w, db1 + w, dh, xe, w1 + w, stride, r, C, F, false);
    });
  }

 private:
  // fn(rows, first row, row count, weight offset): once for all groups when they are uniform (one
  // batched product per layer), else group by group (an expert's whole MLP while its rows are in cache;
  // rows between groups belong to none).
  template <class Fn>
  void each(const GroupRows& rows, Fn&& fn) {
    if (rows.uniform()) return fn(rows, 0, int64_t(rows.groups) * rows.rows, 0);
    for (int gi = 0; gi < rows.groups; gi++) {
      if (rows.size(gi) <= 0) continue;
      GroupRows one;  // host-known rows: begin and count are both given
      one.groups = 1, one.begin = rows.begin + gi, one.count = rows.count + gi;
      fn(one, rows.first(gi), rows.size(gi), size_t(gi) * stride);
    }
  }
};

}  // namespace scmoe
