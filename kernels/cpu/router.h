// MoE router math on gate logits [N, E] (the gate's linear layer is a separate matmul), as RouterSpec
// (kernels/backend_types.h) defines it: softmax or sigmoid scores, top-k on the scores plus an
// optional expert bias (ties towards the lower expert index), gates from the scores (renormalised over
// the k), the GShard/Switch load-balance loss, the router z-loss and DeepSeek-V3's sequence-level
// balance loss. Per-token math in double whatever T. Backward turns gradients of the k gate values (and
// the losses' coefficients) into gradients of the logits; the bias has none.
#pragma once
#include <cstdint>

#include "kernels/backend_types.h"

namespace scmoe::cpu {

struct RouterLosses {
  double aux = 0;  // E * sum_e mean_n(q[n,e]) * f_e, f_e = (assignments to e before capacity) / (N k)
  double z = 0;    // mean_n logsumexp(logits[n,:])^2
  double seq = 0;  // mean over sequences of E/(k T) sum_e count_{s,e} mean_t q[t,e] (0 without seq_len)
};

// probs [N,E] = the scores p (saved), topk_idx [N,k], topk_gate [N,k]; counts[E] (assignments before
// capacity) and pmean[E] = mean_n q[n,e] for the aux loss and its backward; seq_counts [N/seq_len, E]
// (assignments per sequence, for the backward) when r.seq_len > 0 (N must be a multiple of it).
template <class T>
RouterLosses router_forward(const T* logits, int N, const RouterSpec& r, T* probs, int32_t* topk_idx,
                            T* topk_gate, double* pmean, int64_t* counts, int32_t* seq_counts);

// dlogits[N,E] (overwritten) from dgate[N,k] plus sc.aux * d(aux)/dlogits + sc.z * d(z)/dlogits +
// sc.seq * d(seq)/dlogits; the counts are treated as constants (they come from an arg-max).
template <class T>
void router_backward(T* dlogits, const T* dgate, const T* logits, const T* probs, const int32_t* topk_idx,
                     const int64_t* counts, const int32_t* seq_counts, int N, const RouterSpec& r,
                     const RouterGradScales& sc);

// Auxiliary-loss-free balancing after an optimizer step: bias_e += rate * sign(mean(load) - load_e)
// (each step in double, stored as float), then minus the biases' mean when `center`; load (the step's
// global assignments per expert before capacity) is zeroed for the next step.
void expert_bias_update(float* bias, int64_t* load, int E, double rate, bool center);
// load[e] += counts[e] (the micro-batches of one step).
void add_counts(int64_t* load, const int64_t* counts, int E);

// Noisy top-k gating (Shazeer et al.), elementwise over n = N*E: logits += eps * softplus(noise_pre)
// with noise_pre = x . W_noise and eps ~ N(0,1) drawn by the caller. The backward turns dlogits into
// the gradient of noise_pre in place: dlogits *= eps * sigmoid(noise_pre).
template <class T>
void gate_noise_forward(T* logits, const T* noise_pre, const T* eps, int64_t n);
template <class T>
void gate_noise_backward(T* dlogits, const T* noise_pre, const T* eps, int64_t n);

// The router's statistics over several ranks (expert parallelism): aux = E * sum_e pmean_e * f_e,
// z = mean lse^2 and seq (a mean over sequences) are means over the global batch, so each rank
// contributes its sums. pack writes buf[router_stats_size(E)] = {counts[e], N * pmean[e], N * z, S * seq}
// (S = this rank's sequences) for an all-reduce; unpack turns the summed buffer into the global counts
// (which the router's backward uses) and losses[0..2] = {aux, z, seq} over N_global tokens with k
// choices each and S_global sequences.
void router_stats_pack(double* buf, const int64_t* counts, const double* pmean, const double* losses, int N,
                       int64_t S, int E);
void router_stats_unpack(int64_t* counts, double* losses, const double* buf, int64_t N_global, int64_t S_global,
                         int k, int E);

}  // namespace scmoe::cpu
