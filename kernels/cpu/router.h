// MoE router math on gate logits [N, E] (the gate's linear layer is a separate matmul):
// softmax over all experts (in double, whatever T), top-k with ties broken towards the lower expert
// index, optional renormalisation of the k probabilities, the GShard/Switch load-balance loss and the
// router z-loss. Backward turns gradients of the k gate values (and the two losses' coefficients)
// into gradients of the logits.
#pragma once
#include <cstdint>

namespace scmoe::cpu {

struct RouterLosses {
  double aux = 0;  // E * sum_e mean_n(p[n,e]) * f_e, f_e = (assignments to e before capacity) / (N k)
  double z = 0;    // mean_n logsumexp(logits[n,:])^2
};

// probs [N,E] (saved), topk_idx [N,k], topk_gate [N,k]; counts[E] (assignments before capacity) and
// the mean probability per expert pmean[E] are written for the aux loss and its backward.
template <class T>
RouterLosses router_forward(const T* logits, int N, int E, int k, bool renormalize, T* probs,
                            int32_t* topk_idx, T* topk_gate, double* pmean, int64_t* counts);

// dlogits[N,E] (overwritten) from dgate[N,k] plus aux_scale * d(aux)/dlogits + z_scale * d(z)/dlogits.
template <class T>
void router_backward(T* dlogits, const T* dgate, const T* logits, const T* probs, const int32_t* topk_idx,
                     const int64_t* counts, int N, int E, int k, bool renormalize, double aux_scale,
                     double z_scale);

// Noisy top-k gating (Shazeer et al.), elementwise over n = N*E: logits += eps * softplus(noise_pre)
// with noise_pre = x . W_noise and eps ~ N(0,1) drawn by the caller. The backward turns dlogits into
// the gradient of noise_pre in place: dlogits *= eps * sigmoid(noise_pre).
template <class T>
void gate_noise_forward(T* logits, const T* noise_pre, const T* eps, int64_t n);
template <class T>
void gate_noise_backward(T* dlogits, const T* noise_pre, const T* eps, int64_t n);

// The router's statistics over several ranks (expert parallelism): aux = E * sum_e pmean_e * f_e and
// z = mean lse^2 are means over the global batch, so each rank contributes its sums. pack writes
// buf[2E+1] = {counts[e], N * pmean[e], N * z} (z = losses[1]) for an all-reduce; unpack turns the
// summed buffer into the global counts (which the router's backward uses) and losses[0..1] = {aux, z}
// over N_global tokens with k choices each.
void router_stats_pack(double* buf, const int64_t* counts, const double* pmean, const double* losses, int N,
                       int E);
void router_stats_unpack(int64_t* counts, double* losses, const double* buf, int64_t N_global, int k, int E);

}  // namespace scmoe::cpu
