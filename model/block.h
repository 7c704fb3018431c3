// One pre-norm transformer block and its feed-forward variants (model/architecture.h lays them out):
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
#include <vector>

#include "model/layers.h"
#include "model/moe.h"

namespace scmoe {

// The block output, written once for every feed-forward variant (training and generation): a + the
// shared expert / MLP (scaled by cg1's coefficient, or mixed with the routed output by cg2) + the
// routed output. tmp: scratch of N x C; coef: the combine gate's coefficients (saved).
template <class B>
void block_output(B& k, Combine combine, bool has_mlp, bool has_moe, typename B::T* out, const typename B::T* a,
                  const typename B::T* mlp_out, const typename B::T* moe_out, const typename B::T* gate_z,
                  typename B::S* coef, typename B::T* tmp, int N, int C) {
  const int64_t NC = (int64_t)N * C;
  if (combine == Combine::cg1) {
    k.cg1_forward(tmp, coef, gate_z, mlp_out, N, C);
    k.add(out, a, tmp, NC);
  } else if (combine == Combine::cg2) {
    k.cg2_forward(tmp, coef, gate_z, mlp_out, moe_out, N, C);
    k.add(out, a, tmp, NC);
    return;
  } else if (has_mlp) {
    k.add(out, a, mlp_out, NC);
  } else {
    k.copy(out, a, NC);
  }
  if (has_moe) k.add_inplace(out, moe_out, NC);
}

template <class B>
struct Block {
  using T = typename B::T;
  using S = typename B::S;
  B* k = nullptr;
  int N = 0, C = 0;
  Norm<B> ln1, ln2;
  Attention<B> attn;
  bool has_mlp = true;            // the dense MLP, or the shared expert when the block has a MoE
  MLP<B> mlp;
  std::unique_ptr<MoE<B>> moe;    // routed experts (null for dense blocks)
  TapKind tap = TapKind::none;    // where the routed branch reads its input
  int tap_src = -1;
  Norm<B> moe_norm;               // Pos-1/Pos-3 taps normalise a residual stream with their own norm
  Combine combine = Combine::add;
  Linear<B> combine_gate;         // cg1: [1, C]; cg2: [2, C]

  // saved for backward
  T *ln1_out = nullptr, *a = nullptr, *u = nullptr, *mlp_out = nullptr, *moe_out = nullptr;
  T *gate_z = nullptr, *moe_norm_out = nullptr;
  S* gate_coef = nullptr;
  const T* moe_in = nullptr;      // the routed branch's input (set by the model)
  T* tmp = nullptr;               // shared scratch
  std::vector<const T*> du_taps;  // gradients to add to dL/du (routed branches that read this u)

  void bind(B& kernels, const BlockArch& ba, const ParamViews<B>& v) {
    k = &kernels, C = ba.ln1.C;
    ln1.bind(kernels, ba.ln1, v), attn.bind(kernels, ba.attn, v), ln2.bind(kernels, ba.ln2, v);
    has_mlp = ba.has_mlp, combine = ba.combine, tap = ba.tap, tap_src = ba.src;
    if (has_mlp) mlp.bind(kernels, ba.mlp, v);
    if (combine != Combine::add) combine_gate.bind(kernels, ba.combine_gate, v);
    if (tap == TapKind::norm_of_input) moe_norm.bind(kernels, ba.moe_norm, v);
  }
  void alloc(Arena& ar, int Bn, int Tn, T* shared_tmp, T* att_scratch, S* att_scratch_s) {
    N = Bn * Tn;
    const size_t NC = (size_t)N * C;
    tmp = shared_tmp;
    ln1.alloc(ar, N), ln2.alloc(ar, N);
    attn.alloc(ar, Bn, Tn, att_scratch, att_scratch_s);
    ln1_out = ar.alloc<T>(NC), a = ar.alloc<T>(NC), u = ar.alloc<T>(NC);
    if (has_mlp) mlp.alloc(ar, N), mlp_out = ar.alloc<T>(NC);
    if (!moe) return;
    moe->alloc(ar, N);
    moe_out = ar.alloc<T>(NC);
    if (tap == TapKind::norm_of_input) moe_norm.alloc(ar, N), moe_norm_out = ar.alloc<T>(NC);
    if (combine != Combine::add) gate_z = ar.alloc<T>((size_t)N * 2), gate_coef = ar.alloc<S>((size_t)N * 2);
  }

  // Forward in stages so the model can interleave a routed branch's phases (model/schedule.h):
  // attn (a, u), ffn (shared expert / MLP and the combine gate's logits), out (the sum). The routed
  // branch's output must be in moe_out before out().
  void forward_attn(const T* h) {
    ln1.forward(ln1_out, h, N);
    attn.forward(tmp, ln1_out);
    ln2.residual_forward(a, u, h, tmp, N);  // a = h + attn, u = LN2(a)
  }
  void forward_ffn() {
    if (has_mlp) mlp.forward(mlp_out, u, N);
    if (combine != Combine::add) combine_gate.forward(gate_z, u, N);
  }
  void forward_out(T* out) {
    block_output(*k, combine, has_mlp, moe != nullptr, out, a, mlp_out, moe_out, gate_z, gate_coef, tmp, N, C);
  }

  // Backward stages, mirrored. out_backward splits dL/d(out) (d) into the routed branch's gradient
  // (returned; feed it to moe->backward_begin at once) and the shared expert's (kept in scratch for
  // ffn_backward, which must come next). join_backward adds the routed branches that read this u
  // (du_taps) and goes through LN2 into d; attn_backward turns d into dL/d(h).
  const T* out_backward(const T* d, GradScratch<B>& s) {
    dse = d;
    if (combine == Combine::cg1) {
      k->cg1_backward(s.dnorm, s.dgate, d, gate_coef, mlp_out, N, C);
      dse = s.dnorm;
    } else if (combine == Combine::cg2) {
      k->cg2_backward(s.dnorm, tmp, s.dgate, d, gate_coef, mlp_out, moe_out, N, C);
      dse = s.dnorm;
      return tmp;
    }
    return d;
  }
  void ffn_backward(GradScratch<B>& s) {
    if (!has_mlp) return k->zero(s.du, (size_t)N * C);
    mlp.backward(s.du, dse, u, N, s, false);
    if (combine != Combine::add) combine_gate.backward(s.du, s.dgate, u, N, true);
  }
  void join_backward(T* d, GradScratch<B>& s) {
    for (const T* t : du_taps) k->add_inplace(s.du, t, (int64_t)N * C);
    ln2.backward(d, s.du, a, N, true);
  }
  void attn_backward(T* d, const T* h, GradScratch<B>& s) {
    attn.backward(s.dnorm, d, ln1_out, s);
    ln1.backward(d, s.dnorm, h, N, true);
  }

 private:
  const T* dse = nullptr;  // the shared expert's output gradient between out_backward and ffn_backward
};

}  // namespace scmoe
