// The dense building blocks: Linear, Norm (LayerNorm | RMSNorm), causal self-attention and the GELU
// MLP. Each layer registers its tensors in the ParamTable, binds views into the parameter and gradient
// buffers, asks the arena for the activations its backward needs, and has forward/backward over N rows.
#pragma once
#include <cmath>
#include <string>

#include "core/arena.h"
#include "kernels/ops.h"
#include "model/params.h"

namespace scmoe {

template <class T>
struct Linear {
  int in = 0, out = 0;
  bool has_bias = true;
  size_t w_off = 0, b_off = 0;
  T *w = nullptr, *b = nullptr, *dw = nullptr, *db = nullptr;

  void setup(ParamTable& pt, const std::string& name, int in_, int out_, bool bias, double std) {
    in = in_, out = out_, has_bias = bias;
    w_off = pt.add(name + ".weight", {out, in}, true, Init::normal, std);
    if (bias) b_off = pt.add(name + ".bias", {out}, false, Init::zeros);
  }
  void bind(T* params, T* grads) {
    w = params + w_off, dw = grads + w_off;
    if (has_bias) b = params + b_off, db = grads + b_off;
  }
  void forward(T* y, const T* x, int N) const { ops::matmul_forward(y, x, w, b, N, in, out); }
  void backward(T* dx, const T* dy, const T* x, int N, bool accumulate_dx) const {
    ops::matmul_backward(dx, dw, db, dy, x, w, N, in, out, accumulate_dx);
  }
};

template <class T>
struct Norm {
  int C = 0;
  bool rms = false;
  size_t w_off = 0, b_off = 0;
  T *w = nullptr, *b = nullptr, *dw = nullptr, *db = nullptr;
  T *mean = nullptr, *rstd = nullptr;  // per-row statistics saved by forward

  void setup(ParamTable& pt, const std::string& name, int C_, bool rms_) {
    C = C_, rms = rms_;
    w_off = pt.add(name + ".weight", {C}, false, Init::ones);
    if (!rms) b_off = pt.add(name + ".bias", {C}, false, Init::zeros);
  }
  void bind(T* params, T* grads) {
    w = params + w_off, dw = grads + w_off;
    if (!rms) b = params + b_off, db = grads + b_off;
  }
  void alloc(Arena& a, int N) {
    mean = a.alloc<T>(N);
    rstd = a.alloc<T>(N);
  }
  void forward(T* y, const T* x, int N) {
    if (rms) ops::rmsnorm_forward(y, rstd, x, w, N, C);
    else ops::layernorm_forward(y, mean, rstd, x, w, b, N, C);
  }
  void backward(T* dx, const T* dy, const T* x, int N, bool accumulate_dx) {
    if (rms) ops::rmsnorm_backward(dx, dw, dy, x, w, rstd, N, C, accumulate_dx);
    else ops::layernorm_backward(dx, dw, db, dy, x, w, mean, rstd, N, C, accumulate_dx);
  }
};

// Scratch gradient buffers shared by all layers of a model (backward runs one layer at a time).
template <class T>
struct GradScratch {
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

template <class T>
struct Attention {
  int B = 0, Tn = 0, C = 0, H = 0;
  Linear<T> qkv, proj;
  T *qkv_out = nullptr, *att = nullptr, *atty = nullptr;

  void setup(ParamTable& pt, const std::string& name, int C_, int H_, double std, double proj_std) {
    C = C_, H = H_;
    qkv.setup(pt, name + ".qkv", C, 3 * C, true, std);
    proj.setup(pt, name + ".proj", C, C, true, proj_std);
  }
  void bind(T* p, T* g) { qkv.bind(p, g), proj.bind(p, g); }
  void alloc(Arena& a, int B_, int T_) {
    B = B_, Tn = T_;
    qkv_out = a.alloc<T>((size_t)B * Tn * 3 * C);
    att = a.alloc<T>((size_t)B * H * Tn * Tn);
    atty = a.alloc<T>((size_t)B * Tn * C);
  }
  void forward(T* y, const T* x) {
    int N = B * Tn;
    qkv.forward(qkv_out, x, N);
    ops::attention_forward(atty, att, qkv_out, B, Tn, C, H);
    proj.forward(y, atty, N);
  }
  // dx receives the gradient w.r.t. x (overwritten).
  void backward(T* dx, const T* dy, const T* x, GradScratch<T>& s) {
    int N = B * Tn;
    proj.backward(s.datty, dy, atty, N, false);
    ops::attention_backward(s.dqkv, s.datty, qkv_out, att, B, Tn, C, H);
    qkv.backward(dx, s.dqkv, x, N, false);
  }
};

template <class T>
struct MLP {
  int C = 0, F = 0, N = 0;
  Linear<T> fc, proj;
  T *h = nullptr, *g = nullptr;  // pre- and post-GELU hidden activations

  void setup(ParamTable& pt, const std::string& name, int C_, int F_, double std, double proj_std) {
    C = C_, F = F_;
    fc.setup(pt, name + ".fc", C, F, true, std);
    proj.setup(pt, name + ".proj", F, C, true, proj_std);
  }
  void bind(T* p, T* gr) { fc.bind(p, gr), proj.bind(p, gr); }
  void alloc(Arena& a, int N_) {
    N = N_;
    h = a.alloc<T>((size_t)N * F);
    g = a.alloc<T>((size_t)N * F);
  }
  // Runs on the first `rows` rows (experts run on a variable number of routed tokens).
  void forward(T* y, const T* x, int rows) {
    fc.forward(h, x, rows);
    ops::gelu_forward(g, h, (int64_t)rows * F);
    proj.forward(y, g, rows);
  }
  void backward(T* dx, const T* dy, const T* x, int rows, GradScratch<T>& s, bool accumulate_dx) {
    proj.backward(s.dg, dy, g, rows, false);
    ops::gelu_backward(s.dh, h, s.dg, (int64_t)rows * F);
    fc.backward(dx, s.dh, x, rows, accumulate_dx);
  }
};

}  // namespace scmoe
