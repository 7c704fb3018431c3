// The optimizer step of a GPT<B>, written once for both backends: the replicated gradients summed over
// ranks (data parallelism), the global gradient norm (replicated tensors once, routed experts summed
// over the ranks that hold them), clipping, and AdamW with decoupled weight decay (skipped for norms
// and biases), all in the backend's memory and stream order; the kernels are kernels/cpu/adamw.h and
// kernels/cuda/adamw.h. Deterministic: reductions over fixed chunks in a fixed order.
#pragma once
#include <cstdint>
#include <type_traits>
#include <vector>

#include "comm/communicator.h"
#include "model/gpt.h"

namespace scmoe {

template <class B>
class AdamW {
 public:
  using T = typename B::T;
  using G = typename B::G;
  using Acc = typename B::Acc;

  AdamW(const OptimConfig& cfg, GPT<B>& model)
      : cfg_(cfg), model_(model), m_(model.table().total(), "AdamW first moments"),
        v_(model.table().total(), "AdamW second moments"), sq_(2, "gradient norm"), clip_(2, "clip factor"),
        plan_(model.kernels().make_param_plan(model.table())) {}

  // One update with learning rate `lr` from the model's accumulated gradients; comm: the ranks the
  // model's data-parallel replicas live on (null: one process). Returns the gradient norm before
  // clipping (a host read: it waits for the step).
  double step(double lr, Communicator* comm) {
    // Host-run exchanges (Gloo, shared memory) take their place in the ranks' collective order when
    // they run: the model's must all be done before this step issues its own.
    model_.synchronize();
    B& k = model_.kernels();
    G* g = model_.grads();
    Stream* s = k.collective_stream();
    const bool several = comm && comm->world_size() > 1;
    if (several)
      for (const auto& [b, e] : model_.table().replicated_ranges()) comm->all_reduce_sum(g + b, e - b, dtype<G>(), s);
    k.grad_norm_squared(sq_.get(), g, plan_);
    if (several) comm->all_reduce_sum(sq_.get() + 1, 1, DType::f64, s);
    k.grad_clip_mult(clip_.get(), clip_.get() + 1, sq_.get(), 2, cfg_.grad_clip);
    t_++;
    T* copy = std::is_same<T, G>::value ? nullptr : model_.weights();
    k.adamw_step(model_.params(), m_.get(), v_.get(), g, copy, plan_, cfg_, lr, t_, clip_.get());
    Acc norm = 0;
    k.download(&norm, clip_.get() + 1, 1);
    return double(norm);
  }
  int64_t t() const { return t_; }
  void set_t(int64_t t) { t_ = t; }
  // The moments in the ParamTable's layout (host arrays), for checkpoints.
  void get_moments(G* m, G* v) {
    model_.kernels().download(m, m_.get(), m_.size());
    model_.kernels().download(v, v_.get(), v_.size());
  }
  void set_moments(const G* m, const G* v) {
    model_.kernels().upload(m_.get(), m, m_.size());
    model_.kernels().upload(v_.get(), v, v_.size());
  }

 private:
  template <class X>
  static DType dtype() {
    return std::is_same<X, double>::value ? DType::f64 : DType::f32;
  }
  OptimConfig cfg_;
  GPT<B>& model_;
  typename B::template Array<G> m_, v_;
  typename B::template Array<double> sq_;  // squared norms: replicated, experts
  typename B::template Array<Acc> clip_;   // the clip multiplier and the norm
  typename B::ParamPlan plan_;
  int64_t t_ = 0;
};

}  // namespace scmoe
