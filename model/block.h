// One pre-norm transformer block and its feed-forward variants (DESIGN.md section 3):
//   a = h + Attn(LN1(h)),  u = LN2(a)
//   dense:          out = a + MLP(u)
//   moe:            out = a + MoE(u)
//   shared_expert:  out = a + SE(u) + MoE(u)
//   scmoe:          out = a + coef(u) * SE(u) + MoE(x)   x: a shortcut tap from the preceding block
//                   (Pos-1 norm(h), Pos-2 u of the preceding block, Pos-3 norm of its input)
// The routed branch's input is given by the model (`moe_in`), and the gradient w.r.t. it is left in
// moe->dx for the model to route back to where the tap came from.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "model/layers.h"
#include "model/moe.h"

namespace scmoe {

enum class Combine { add, cg1, cg2 };

template <class T>
struct Block {
  int N = 0, C = 0;
  Norm<T> ln1, ln2;
  Attention<T> attn;
  bool has_mlp = true;            // the dense MLP, or the shared expert when the block has a MoE
  MLP<T> mlp;
  std::unique_ptr<MoE<T>> moe;    // routed experts (null for dense blocks)
  bool moe_own_norm = false;      // Pos-1/Pos-3 taps normalise a residual stream with their own norm
  Norm<T> moe_norm;
  Combine combine = Combine::add;
  Linear<T> combine_gate;         // cg1: [1, C]; cg2: [2, C]

  // saved for backward
  T *ln1_out = nullptr, *a = nullptr, *u = nullptr, *mlp_out = nullptr, *moe_out = nullptr;
  T *gate_z = nullptr, *gate_coef = nullptr, *moe_norm_out = nullptr;
  const T* moe_in = nullptr;      // the routed branch's input (set by the model)
  T* tmp = nullptr;               // shared scratch
  std::vector<const T*> du_taps;  // gradients to add to dL/du (routed branches that read this u)

  void setup(ParamTable& pt, const std::string& name, const ModelConfig& mc) {
    C = mc.d_model;
    bool rms = mc.norm == "rmsnorm";
    ln1.setup(pt, name + ".ln1", C, rms);
    attn.setup(pt, name + ".attn", C, mc.n_head, mc.init_std, proj_std(mc));
    ln2.setup(pt, name + ".ln2", C, rms);
  }
  static double proj_std(const ModelConfig& mc) { return mc.init_std / std::sqrt(2.0 * mc.n_layer); }

  // Feed-forward variants; call exactly one after setup().
  void setup_dense(ParamTable& pt, const std::string& name, const ModelConfig& mc) {
    mlp.setup(pt, name + ".mlp", C, mc.d_ff, mc.init_std, proj_std(mc));
  }
  void setup_moe(ParamTable& pt, const std::string& name, const ModelConfig& mc, const MoeConfig& mo, int k,
                 bool shared_expert, Combine comb, bool own_norm, int layer, Communicator* comm) {
    has_mlp = shared_expert;
    const int F = mo.d_expert > 0 ? mo.d_expert : mc.d_ff;
    if (shared_expert) mlp.setup(pt, name + ".shared_expert", C, F, mc.init_std, proj_std(mc));
    combine = comb;
    if (comb != Combine::add) combine_gate.setup(pt, name + ".combine", C, comb == Combine::cg1 ? 1 : 2, false, mc.init_std);
    moe_own_norm = own_norm;
    if (own_norm) moe_norm.setup(pt, name + ".moe.norm", C, mc.norm == "rmsnorm");
    moe = std::make_unique<MoE<T>>();
    moe->setup(pt, name + ".moe", mc, mo, k, layer, comm);
  }

  void bind(T* p, T* g) {
    ln1.bind(p, g), attn.bind(p, g), ln2.bind(p, g);
    if (has_mlp) mlp.bind(p, g);
    if (moe) moe->bind(p, g);
    if (moe_own_norm) moe_norm.bind(p, g);
    if (combine != Combine::add) combine_gate.bind(p, g);
  }
  void alloc(Arena& ar, int B, int Tn, T* shared_tmp) {
    N = B * Tn;
    size_t NC = (size_t)N * C;
    tmp = shared_tmp;
    ln1.alloc(ar, N), ln2.alloc(ar, N);
    attn.alloc(ar, B, Tn);
    ln1_out = ar.alloc<T>(NC), a = ar.alloc<T>(NC), u = ar.alloc<T>(NC);
    if (has_mlp) mlp.alloc(ar, N), mlp_out = ar.alloc<T>(NC);
    if (!moe) return;
    moe->alloc(ar, N);
    moe_out = ar.alloc<T>(NC);
    if (moe_own_norm) moe_norm.alloc(ar, N), moe_norm_out = ar.alloc<T>(NC);
    if (combine != Combine::add) gate_z = ar.alloc<T>((size_t)N * 2), gate_coef = ar.alloc<T>((size_t)N * 2);
  }

  // Forward in stages so the model can interleave a routed branch's phases (DESIGN.md section 3):
  // attn (a, u), ffn (shared expert / MLP and the combine gate's logits), out (the sum). The routed
  // branch's output must be in moe_out before out().
  void forward_attn(const T* h) {
    ln1.forward(ln1_out, h, N);
    attn.forward(tmp, ln1_out);
    ops::add(a, h, tmp, (int64_t)N * C);
    ln2.forward(u, a, N);
  }
  void forward_ffn() {
    if (has_mlp) mlp.forward(mlp_out, u, N);
    if (combine != Combine::add) combine_gate.forward(gate_z, u, N);
  }
  void forward_out(T* out) {
    const int64_t NC = (int64_t)N * C;
    ops::copy(out, a, NC);
    if (combine == Combine::cg1) {
      ops::cg1_forward(tmp, gate_coef, gate_z, mlp_out, N, C);
      ops::add_inplace(out, tmp, NC);
    } else if (combine == Combine::cg2) {
      ops::cg2_forward(tmp, gate_coef, gate_z, mlp_out, moe_out, N, C);
      ops::add_inplace(out, tmp, NC);
      return;
    } else if (has_mlp) {
      ops::add_inplace(out, mlp_out, NC);
    }
    if (moe) ops::add_inplace(out, moe_out, NC);
  }

  // Backward stages, mirrored. out_backward splits dL/d(out) (d) into the routed branch's gradient
  // (returned; feed it to moe->backward_begin at once) and the shared expert's (kept in scratch for
  // ffn_backward, which must come next). join_backward adds the routed branches that read this u
  // (du_taps) and goes through LN2 into d; attn_backward turns d into dL/d(h).
  const T* out_backward(const T* d, GradScratch<T>& s) {
    dse = d;
    if (combine == Combine::cg1) {
      ops::cg1_backward(s.dnorm, s.dgate, d, gate_coef, mlp_out, N, C);
      dse = s.dnorm;
    } else if (combine == Combine::cg2) {
      ops::cg2_backward(s.dnorm, tmp, s.dgate, d, gate_coef, mlp_out, moe_out, N, C);
      dse = s.dnorm;
      return tmp;
    }
    return d;
  }
  void ffn_backward(GradScratch<T>& s) {
    if (!has_mlp) return ops::fill(s.du, T(0), (int64_t)N * C);
    mlp.backward(s.du, dse, u, N, s, false);
    if (combine != Combine::add) combine_gate.backward(s.du, s.dgate, u, N, true);
  }
  void join_backward(T* d, GradScratch<T>& s) {
    for (const T* t : du_taps) ops::add_inplace(s.du, t, (int64_t)N * C);
    ln2.backward(d, s.du, a, N, true);
  }
  void attn_backward(T* d, const T* h, GradScratch<T>& s) {
    attn.backward(s.dnorm, d, ln1_out, s);
    ln1.backward(d, s.dnorm, h, N, true);
  }

 private:
  const T* dse = nullptr;  // the shared expert's output gradient between out_backward and ffn_backward
};

}  // namespace scmoe
