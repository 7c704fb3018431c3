// CPU reference for the MoE router (see router.h): softmax, top-k, renormalisation, aux and z losses,
// and their backward. Per-token math in double whatever T; sums over tokens run serially.
#include "kernels/cpu/router.h"

#include <cmath>
#include <vector>

#include "core/check.h"

namespace scmoe::cpu {

namespace {
// logsumexp of one row in double; the max shift keeps exp from overflowing.
template <class T>
double row_lse(const T* l, int E) {
  double maxv = -INFINITY;
  for (int e = 0; e < E; e++) maxv = double(l[e]) > maxv ? double(l[e]) : maxv;
  double sum = 0;
  for (int e = 0; e < E; e++) sum += std::exp(double(l[e]) - maxv);
  return maxv + std::log(sum);
}
}  // namespace

template <class T>
RouterLosses router_forward(const T* logits, int N, int E, int k, bool renormalize, T* probs,
                            int32_t* topk_idx, T* topk_gate, double* pmean, int64_t* counts) {
  SCMOE_CHECK(E >= 1 && k >= 1 && k <= E, "router_forward: need 1 <= k <= E, got k=" << k << " E=" << E);
  std::vector<double> lse(N);
#pragma omp parallel
  {
    std::vector<double> p(E);
    std::vector<char> taken(E);
#pragma omp for schedule(static)
    for (int n = 0; n < N; n++) {
      const T* l = logits + (int64_t)n * E;
      double z = row_lse(l, E);
      lse[n] = z;
      T* pr = probs + (int64_t)n * E;
      for (int e = 0; e < E; e++) {
        p[e] = std::exp(double(l[e]) - z);
        pr[e] = T(p[e]);
        taken[e] = 0;
      }
      // k passes of argmax: O(kE) is nothing next to the gate matmul, and a strict '>' scanned from
      // expert 0 gives ties to the lower index. Starting from the first free expert (not -1) means
      // a NaN row still yields k distinct, valid indices instead of garbage.
      int32_t* idx = topk_idx + (int64_t)n * k;
      double s = 0;
      for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < E; e++)
          if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
        taken[best] = 1;
        idx[j] = best;
        s += p[best];
      }
      double div = (renormalize && k > 1) ? s : 1.0;
      T* g = topk_gate + (int64_t)n * k;
      for (int j = 0; j < k; j++) g[j] = T(p[idx[j]] / div);
    }
  }
  // Per-expert sums over tokens in token order: each expert is one output, so parallel over e is safe.
#pragma omp parallel for schedule(static)
  for (int e = 0; e < E; e++) {
    double s = 0;
    for (int n = 0; n < N; n++) s += double(probs[(int64_t)n * E + e]);
    pmean[e] = N > 0 ? s / N : 0.0;
  }
  for (int e = 0; e < E; e++) counts[e] = 0;
  for (int64_t i = 0; i < (int64_t)N * k; i++) counts[topk_idx[i]]++;
  RouterLosses out;
  if (N == 0) return out;  // an empty batch has no loss (rather than 0/0)
  for (int e = 0; e < E; e++) out.aux += pmean[e] * double(counts[e]);
  out.aux *= double(E) / (double(N) * k);
  for (int n = 0; n < N; n++) out.z += lse[n] * lse[n];
  out.z /= N;
  return out;
}

template <class T>
void router_backward(T* dlogits, const T* dgate, const T* logits, const T* probs, const int32_t* topk_idx,
                     const int64_t* counts, int N, int E, int k, bool renormalize, double aux_scale,
                     double z_scale) {
  SCMOE_CHECK(E >= 1 && k >= 1 && k <= E, "router_backward: need 1 <= k <= E, got k=" << k << " E=" << E);
  if (N == 0) return;
  // d(aux)/dp[n,e] = E f_e / N with f_e = counts_e / (N k) held constant (Switch): the counts come from
  // a non-differentiable argmax, so they are treated as data.
  std::vector<double> daux(E);
  for (int e = 0; e < E; e++) daux[e] = aux_scale * E * double(counts[e]) / (double(N) * k) / N;
#pragma omp parallel
  {
    std::vector<double> dp(E);
#pragma omp for schedule(static)
    for (int n = 0; n < N; n++) {
      const T* p = probs + (int64_t)n * E;
      const int32_t* idx = topk_idx + (int64_t)n * k;
      const T* dg = dgate + (int64_t)n * k;
      for (int e = 0; e < E; e++) dp[e] = daux[e];
      if (renormalize && k > 1) {
        // g_j = p_j / S: dp_i = dg_i / S - (sum_j dg_j p_j) / S^2 for each selected i.
        double S = 0, t = 0;
        for (int j = 0; j < k; j++) {
          S += double(p[idx[j]]);
          t += double(dg[j]) * double(p[idx[j]]);
        }
        for (int j = 0; j < k; j++) dp[idx[j]] += double(dg[j]) / S - t / (S * S);
      } else {
        for (int j = 0; j < k; j++) dp[idx[j]] += double(dg[j]);
      }
      double pdp = 0;
      for (int e = 0; e < E; e++) pdp += double(p[e]) * dp[e];
      // z = mean_n lse_n^2 and d lse / d logit = p, so dz/dlogit = 2 lse_n p / N. The logits are
      // read only when the z-loss is on (lse is not saved by the forward).
      double zc = z_scale != 0 ? z_scale * 2.0 * row_lse(logits + (int64_t)n * E, E) / N : 0.0;
      T* dl = dlogits + (int64_t)n * E;
      for (int e = 0; e < E; e++) dl[e] = T(double(p[e]) * (dp[e] - pdp + zc));
    }
  }
}

template <class T>
void gate_noise_forward(T* logits, const T* noise_pre, const T* eps, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    const T z = noise_pre[i];
    const T softplus = z > T(20) ? z : std::log1p(std::exp(z));
    logits[i] += eps[i] * softplus;
  }
}

template <class T>
void gate_noise_backward(T* dlogits, const T* noise_pre, const T* eps, int64_t n) {
  for (int64_t i = 0; i < n; i++) dlogits[i] *= eps[i] / (T(1) + std::exp(-noise_pre[i]));
}

void router_stats_pack(double* buf, const int64_t* counts, const double* pmean, const double* losses, int N,
                       int E) {
  for (int e = 0; e < E; e++) buf[e] = double(counts[e]), buf[E + e] = pmean[e] * N;
  buf[2 * E] = losses[1] * N;
}

void router_stats_unpack(int64_t* counts, double* losses, const double* buf, int64_t N_global, int k, int E) {
  const double Ng = double(N_global);
  double aux = 0;
  for (int e = 0; e < E; e++) {
    counts[e] = (int64_t)std::llround(buf[e]);
    aux += (buf[E + e] / Ng) * buf[e] / (Ng * k);
  }
  losses[0] = aux * E;
  losses[1] = buf[2 * E] / Ng;
}

template void gate_noise_forward<float>(float*, const float*, const float*, int64_t);
template void gate_noise_forward<double>(double*, const double*, const double*, int64_t);
template void gate_noise_backward<float>(float*, const float*, const float*, int64_t);
template void gate_noise_backward<double>(double*, const double*, const double*, int64_t);
template RouterLosses router_forward<float>(const float*, int, int, int, bool, float*, int32_t*, float*,
                                            double*, int64_t*);
template RouterLosses router_forward<double>(const double*, int, int, int, bool, double*, int32_t*, double*,
                                             double*, int64_t*);
template void router_backward<float>(float*, const float*, const float*, const float*, const int32_t*,
                                     const int64_t*, int, int, int, bool, double, double);
template void router_backward<double>(double*, const double*, const double*, const double*, const int32_t*,
                                      const int64_t*, int, int, int, bool, double, double);

}  // namespace scmoe::cpu
