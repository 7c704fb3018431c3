// CPU reference for the MoE router (see router.h and RouterSpec): scores, top-k on score + bias,
// gates, the aux, z and sequence-level losses, and their backward. Per-token math in double whatever T;
// sums over tokens run serially.
#include "kernels/cpu/router.h"

#include <cmath>
#include <vector>

#include "core/check.h"
#include "kernels/expert_bias_rule.h"

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

double sigmoid(double x) {  // without overflow for large |x|
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

// What the balance losses average: q = p normalised over the experts (softmax scores already are).
template <class T>
double row_sum(const T* p, int E) {
  double s = 0;
  for (int e = 0; e < E; e++) s += double(p[e]);
  return s;
}

void check_spec(const char* who, int N, const RouterSpec& r) {
  SCMOE_CHECK(r.E >= 1 && r.k >= 1 && r.k <= r.E, who << ": need 1 <= k <= E, got k=" << r.k << " E=" << r.E);
  SCMOE_CHECK(r.seq_len <= 0 || N % r.seq_len == 0,
              who << ": " << N << " tokens are not whole sequences of " << r.seq_len);
}
}  // namespace

template <class T>
RouterLosses router_forward(const T* logits, int N, const RouterSpec& r, T* probs, int32_t* topk_idx,
                            T* topk_gate, double* pmean, int64_t* counts, int32_t* seq_counts) {
  check_spec("router_forward", N, r);
  const int E = r.E, k = r.k;
  std::vector<double> lse(N), qnorm(N, 1.0);  // qnorm: the sum q divides by (sigmoid scores)
#pragma omp parallel
  {
    std::vector<double> p(E), key(E);
    std::vector<char> taken(E);
#pragma omp for schedule(static)
    for (int n = 0; n < N; n++) {
      const T* l = logits + (int64_t)n * E;
      const double z = row_lse(l, E);
      lse[n] = z;
      T* pr = probs + (int64_t)n * E;
      for (int e = 0; e < E; e++) {
        p[e] = r.sigmoid ? sigmoid(double(l[e])) : std::exp(double(l[e]) - z);
        pr[e] = T(p[e]);
        key[e] = r.bias ? p[e] + double(r.bias[e]) : p[e];
        taken[e] = 0;
      }
      if (r.sigmoid) qnorm[n] = row_sum(pr, E);
      // k passes of argmax: O(kE) is nothing next to the gate matmul, and a strict '>' scanned from
      // expert 0 gives ties to the lower index. Starting from the first free expert (not -1) means
      // a NaN row still yields k distinct, valid indices instead of garbage.
      int32_t* idx = topk_idx + (int64_t)n * k;
      double s = 0;
      for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < E; e++)
          if (!taken[e] && (best < 0 || key[e] > key[best])) best = e;
        taken[best] = 1;
        idx[j] = best;
        s += p[best];
      }
      const double div = (r.renormalize && k > 1) ? s : 1.0;
      T* g = topk_gate + (int64_t)n * k;
      for (int j = 0; j < k; j++) g[j] = T(p[idx[j]] / div);
    }
  }
  // Per-expert sums over tokens in token order: each expert is one output, so parallel over e is safe.
#pragma omp parallel for schedule(static)
  for (int e = 0; e < E; e++) {
    double s = 0;
    for (int n = 0; n < N; n++) s += double(probs[(int64_t)n * E + e]) / qnorm[n];
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
  const int64_t S = r.sequences(N);
  if (S > 0) {
    const int Tq = r.seq_len;
    std::vector<double> qs(E);
    for (int64_t sq = 0; sq < S; sq++) {
      int32_t* cnt = seq_counts + sq * E;
      for (int e = 0; e < E; e++) cnt[e] = 0, qs[e] = 0;
      for (int64_t n = sq * Tq; n < (sq + 1) * Tq; n++) {
        for (int j = 0; j < k; j++) cnt[topk_idx[n * k + j]]++;
        for (int e = 0; e < E; e++) qs[e] += double(probs[n * E + e]) / qnorm[n];
      }
      double Ls = 0;
      for (int e = 0; e < E; e++) Ls += double(cnt[e]) * (qs[e] / Tq);
      out.seq += Ls * double(E) / (double(k) * Tq);
    }
    out.seq /= double(S);
  }
  return out;
}

template <class T>
void router_backward(T* dlogits, const T* dgate, const T* logits, const T* probs, const int32_t* topk_idx,
                     const int64_t* counts, const int32_t* seq_counts, int N, const RouterSpec& r,
                     const RouterGradScales& sc) {
  check_spec("router_backward", N, r);
  if (N == 0) return;
  const int E = r.E, k = r.k;
  // d(aux)/dq[n,e] = E f_e / N with f_e = counts_e / (N k) held constant (Switch): the counts come from
  // a non-differentiable argmax, so they are treated as data. Likewise per sequence:
  // d(seq)/dq[t,e] = (1/S) E/(k T) count_{s,e} / T.
  std::vector<double> daux(E);
  for (int e = 0; e < E; e++) daux[e] = sc.aux * E * double(counts[e]) / (double(N) * k) / N;
  const int64_t S = r.sequences(N);
  const double dseq_unit = S > 0 ? sc.seq * double(E) / (double(k) * r.seq_len) / r.seq_len / double(S) : 0.0;
#pragma omp parallel
  {
    std::vector<double> dp(E), dq(E);
#pragma omp for schedule(static)
    for (int n = 0; n < N; n++) {
      const T* p = probs + (int64_t)n * E;
      const int32_t* idx = topk_idx + (int64_t)n * k;
      const T* dg = dgate + (int64_t)n * k;
      const int32_t* cnt = S > 0 ? seq_counts + (int64_t)(n / r.seq_len) * E : nullptr;
      for (int e = 0; e < E; e++) dq[e] = daux[e] + (cnt ? dseq_unit * cnt[e] : 0.0);
      // q = p / sum(p) for sigmoid scores: dp_e = (dq_e - sum_j dq_j q_j) / sum(p).
      if (r.sigmoid) {
        const double Sp = row_sum(p, E);
        double t = 0;
        for (int e = 0; e < E; e++) t += dq[e] * double(p[e]) / Sp;
        for (int e = 0; e < E; e++) dp[e] = (dq[e] - t) / Sp;
      } else {
        for (int e = 0; e < E; e++) dp[e] = dq[e];
      }
      if (r.renormalize && k > 1) {
        // g_j = p_j / S: dp_i = dg_i / S - (sum_j dg_j p_j) / S^2 for each selected i.
        double Sg = 0, t = 0;
        for (int j = 0; j < k; j++) {
          Sg += double(p[idx[j]]);
          t += double(dg[j]) * double(p[idx[j]]);
        }
        for (int j = 0; j < k; j++) dp[idx[j]] += double(dg[j]) / Sg - t / (Sg * Sg);
      } else {
        for (int j = 0; j < k; j++) dp[idx[j]] += double(dg[j]);
      }
      // z = mean_n lse_n^2 and d lse / d logit = softmax(logits), so dz/dlogit = 2 lse_n softmax / N.
      // The logits are read only when the z-loss is on (lse is not saved by the forward).
      const T* l = logits + (int64_t)n * E;
      const double z = sc.z != 0 || r.sigmoid ? row_lse(l, E) : 0.0;
      const double zc = sc.z != 0 ? sc.z * 2.0 * z / N : 0.0;
      T* dl = dlogits + (int64_t)n * E;
      if (r.sigmoid) {  // dp/dlogit = p (1 - p), elementwise
        for (int e = 0; e < E; e++) {
          const double pe = double(p[e]);
          dl[e] = T(dp[e] * pe * (1.0 - pe) + (zc != 0 ? zc * std::exp(double(l[e]) - z) : 0.0));
        }
      } else {  // softmax: dlogit = p (dp - p . dp), and the z term's softmax is p itself
        double pdp = 0;
        for (int e = 0; e < E; e++) pdp += double(p[e]) * dp[e];
        for (int e = 0; e < E; e++) dl[e] = T(double(p[e]) * (dp[e] - pdp + zc));
      }
    }
  }
}

void expert_bias_update(float* bias, int64_t* load, int E, double rate, bool center) {
  apply_expert_bias_rule(bias, load, E, rate, center);
}

void add_counts(int64_t* load, const int64_t* counts, int E) {
  for (int e = 0; e < E; e++) load[e] += counts[e];
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
                       int64_t S, int E) {
  for (int e = 0; e < E; e++) buf[e] = double(counts[e]), buf[E + e] = pmean[e] * N;
  buf[2 * E] = losses[1] * N;
  buf[2 * E + 1] = losses[2] * double(S);
}

void router_stats_unpack(int64_t* counts, double* losses, const double* buf, int64_t N_global, int64_t S_global,
                         int k, int E) {
  const double Ng = double(N_global);
  double aux = 0;
  for (int e = 0; e < E; e++) {
    counts[e] = (int64_t)std::llround(buf[e]);
    aux += (buf[E + e] / Ng) * buf[e] / (Ng * k);
  }
  losses[0] = aux * E;
  losses[1] = buf[2 * E] / Ng;
  losses[2] = S_global > 0 ? buf[2 * E + 1] / double(S_global) : 0.0;
}

template void gate_noise_forward<float>(float*, const float*, const float*, int64_t);
template void gate_noise_forward<double>(double*, const double*, const double*, int64_t);
template void gate_noise_backward<float>(float*, const float*, const float*, int64_t);
template void gate_noise_backward<double>(double*, const double*, const double*, int64_t);
template RouterLosses router_forward<float>(const float*, int, const RouterSpec&, float*, int32_t*, float*,
                                            double*, int64_t*, int32_t*);
template RouterLosses router_forward<double>(const double*, int, const RouterSpec&, double*, int32_t*, double*,
                                             double*, int64_t*, int32_t*);
template void router_backward<float>(float*, const float*, const float*, const float*, const int32_t*,
                                     const int64_t*, const int32_t*, int, const RouterSpec&,
                                     const RouterGradScales&);
template void router_backward<double>(double*, const double*, const double*, const double*, const int32_t*,
                                      const int64_t*, const int32_t*, int, const RouterSpec&,
                                      const RouterGradScales&);

}  // namespace scmoe::cpu
