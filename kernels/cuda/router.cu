// Router kernels (see router.h). Forward: one warp per token row (scores, top-k on score + bias by warp
// arg-max, and per-warp running sums of normalised scores, assignment counts and lse^2), a block per
// sequence for the sequence-level statistics, then a single block folds the per-block partials in a
// fixed order into pmean, counts and the losses: deterministic without float atomics. Backward: one
// warp per row.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/router.h"
#include "kernels/expert_bias_rule.h"

SCMOE_CUDA_BEGIN

// Full unrolling keeps the per-lane expert arrays in registers (host compilers ignore it).
#if defined(__CUDACC__)
#define ROUTER_UNROLL _Pragma("unroll")
#else
#define ROUTER_UNROLL
#endif

namespace {
constexpr int kWarps = 8;           // rows in flight per block
constexpr int kMaxRowBlocks = 256;  // forward grid cap: bounds the partials the final pass folds
constexpr int kFinalThreads = 256;

// One warp's row of E logits (lane holds experts lane, lane+32, ...): p[i] = exp(logit - max) (0 past
// E), sum = their warp-wide sum; returns the row's logsumexp.
template <class T, int EPL>
__device__ __forceinline__ float row_exp_lse(const T* l, int E, int lane, float (&p)[EPL], float& sum) {
  float m = -INFINITY;
  ROUTER_UNROLL
  for (int i = 0; i < EPL; i++) {
    const int e = lane + 32 * i;
    p[i] = e < E ? to_f32(l[e]) : -INFINITY;
    m = fmaxf(m, p[i]);
  }
  m = warp_max(m);
  float s = 0.f;
  ROUTER_UNROLL
  for (int i = 0; i < EPL; i++) {
    p[i] = lane + 32 * i < E ? expf(p[i] - m) : 0.f;
    s += p[i];
  }
  sum = warp_sum(s);
  return m + logf(sum);
}

int g_block_cap = kMaxRowBlocks;
int forward_blocks(int N) { return N <= 0 ? 0 : std::min<int>(ceil_div(N, kWarps), g_block_cap); }

// Top-k key: larger routing score (score + bias, any sign) first, then lower expert index. The float's
// bits are mapped to an unsigned that orders like the value (-0 as +0); NaN maps to 0 (below every
// number), which makes an all-NaN row pick the lowest free experts as the CPU's scan does.
__device__ __forceinline__ unsigned long long topk_key(float v, int e) {
  unsigned hi = 0u;
  if (v == v) {
    const unsigned u = __float_as_uint(v == 0.f ? 0.f : v);
    hi = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
  return ((unsigned long long)hi << 32) | (unsigned long long)(~(unsigned)e);
}

__device__ __forceinline__ float sigmoidf_(float x) {  // without overflow for large |x|
  if (x >= 0.f) return 1.f / (1.f + expf(-x));
  const float e = expf(x);
  return e / (1.f + e);
}

__device__ __forceinline__ unsigned long long warp_max_u64(unsigned long long v) {
  for (int o = 16; o > 0; o >>= 1) {
    unsigned long long w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

// EPL = experts per lane (E <= 32 * EPL): the row lives in registers. qnorm[n] receives the sum the
// normalised scores divide by (sigmoid scores; 1 for softmax).
template <class T, int EPL>
__global__ void __launch_bounds__(kWarps * 32)
    router_rows_kernel(const T* logits, int N, int E, int k, bool renormalize, bool sigmoid, const float* bias,
                       float* probs, int32_t* topk_idx, float* topk_gate, float* qnorm, float* ppart, int* cpart,
                       float* zpart) {
  __shared__ float ps[kWarps][kRouterMaxExperts];
  __shared__ int cs[kWarps][kRouterMaxExperts];
  __shared__ float zs[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float psum[EPL], b[EPL];
  int cnt[EPL];
  ROUTER_UNROLL
  for (int i = 0; i < EPL; i++) {
    const int e = lane + 32 * i;
    psum[i] = 0.f, cnt[i] = 0;
    b[i] = bias && e < E ? bias[e] : 0.f;
  }
  float zacc = 0.f;

  for (int n = blockIdx.x * kWarps + warp; n < N; n += gridDim.x * kWarps) {
    float p[EPL], s;
    const T* l = logits + (int64_t)n * E;
    const float lse = row_exp_lse<T, EPL>(l, E, lane, p, s);
    zacc += lse * lse;
    float qs = 1.f;  // q = p / qs
    if (sigmoid) {
      float t = 0.f;
      ROUTER_UNROLL
      for (int i = 0; i < EPL; i++) {
        const int e = lane + 32 * i;
        p[i] = e < E ? sigmoidf_(to_f32(l[e])) : 0.f;
        t += p[i];
      }
      qs = warp_sum(t);
    } else {
      ROUTER_UNROLL
      for (int i = 0; i < EPL; i++) p[i] = p[i] / s;
    }
    float* pr = probs + (int64_t)n * E;
    ROUTER_UNROLL
    for (int i = 0; i < EPL; i++) {
      const int e = lane + 32 * i;
      if (e < E) pr[e] = p[i], psum[i] += p[i] / qs;
    }
    if (lane == 0) qnorm[n] = qs;

    // k rounds of warp arg-max over the experts not yet taken.
    unsigned taken = 0;
    float gsum = 0.f;
    for (int j = 0; j < k; j++) {
      unsigned long long best = 0;
      ROUTER_UNROLL
      for (int i = 0; i < EPL; i++) {
        const int e = lane + 32 * i;
        if (e < E && !((taken >> i) & 1u)) {
          const unsigned long long key = topk_key(p[i] + b[i], e);
          best = key > best ? key : best;
        }
      }
      best = warp_max_u64(best);
      const int e = int(~(unsigned)(best & 0xffffffffull)), owner = e & 31, slot = e >> 5;
      // Selects with constant indices keep p[] and cnt[] in registers.
      float mine = 0.f;
      ROUTER_UNROLL
      for (int i = 0; i < EPL; i++)
        if (i == slot) mine = p[i], cnt[i] += lane == owner;
      if (lane == owner) taken |= 1u << slot;
      const float pe = __shfl_sync(0xffffffffu, mine, owner);  // the real value, NaN included
      gsum += pe;
      if (lane == 0) topk_idx[(int64_t)n * k + j] = e, topk_gate[(int64_t)n * k + j] = pe;
    }
    if (renormalize && k > 1 && lane == 0)
      for (int j = 0; j < k; j++) topk_gate[(int64_t)n * k + j] /= gsum;  // this lane's own writes
  }

  // Fold the block's warps in warp order.
  ROUTER_UNROLL
  for (int i = 0; i < EPL; i++) {
    const int e = lane + 32 * i;
    if (e < E) ps[warp][e] = psum[i], cs[warp][e] = cnt[i];
  }
  if (lane == 0) zs[warp] = zacc;
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    float a = 0.f;
    int c = 0;
    for (int w = 0; w < kWarps; w++) a += ps[w][e], c += cs[w][e];
    ppart[(int64_t)blockIdx.x * E + e] = a;
    cpart[(int64_t)blockIdx.x * E + e] = c;
  }
  if (threadIdx.x == 0) {
    float z = 0.f;
    for (int w = 0; w < kWarps; w++) z += zs[w];
    zpart[blockIdx.x] = z;
  }
}

// One block per sequence of T tokens: seq_counts[s,e] (assignments), and seqpart[s] =
// E/(k T) sum_e count_{s,e} mean_t q[t,e], the sequence's balance loss.
__global__ void __launch_bounds__(kFinalThreads)
    router_seq_kernel(const float* probs, const float* qnorm, const int32_t* topk_idx, int T, int E, int k,
                      int32_t* seq_counts, float* seqpart) {
  __shared__ float scratch[32];
  const int64_t sq = blockIdx.x, t0 = sq * T;
  float part = 0.f;
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    int c = 0;
    float q = 0.f;
    for (int64_t t = t0; t < t0 + T; t++) {
      for (int j = 0; j < k; j++) c += topk_idx[t * k + j] == e;
      q += probs[t * E + e] / qnorm[t];
    }
    seq_counts[sq * E + e] = c;
    part += float(c) * (q / float(T));
  }
  part = block_sum(part, scratch);
  if (threadIdx.x == 0) seqpart[sq] = part * float(E) / (float(k) * float(T));
}

// One block: partials of G row blocks -> pmean, counts, losses; the S sequences' losses -> their mean.
__global__ void __launch_bounds__(kFinalThreads)
    router_final_kernel(const float* ppart, const int* cpart, const float* zpart, int G, const float* seqpart,
                        int64_t S, int N, int E, int k, float* pmean, int64_t* counts, float* losses) {
  __shared__ float scratch[32];
  float aux = 0.f, z = 0.f, seq = 0.f;
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    float s = 0.f;
    int c = 0;
    for (int b = 0; b < G; b++) s += ppart[(int64_t)b * E + e], c += cpart[(int64_t)b * E + e];
    const float pm = N > 0 ? s / float(N) : 0.f;
    pmean[e] = pm;
    counts[e] = c;
    aux += pm * float(c);
  }
  for (int b = threadIdx.x; b < G; b += blockDim.x) z += zpart[b];
  for (int64_t q = threadIdx.x; q < S; q += blockDim.x) seq += seqpart[q];
  aux = block_sum(aux, scratch);
  z = block_sum(z, scratch);
  seq = block_sum(seq, scratch);
  if (threadIdx.x == 0) {
    losses[0] = N > 0 ? aux * float(E) / (float(N) * float(k)) : 0.f;
    losses[1] = N > 0 ? z / float(N) : 0.f;
    losses[2] = S > 0 ? seq / float(S) : 0.f;
  }
}

template <class T, int EPL>
__global__ void __launch_bounds__(kWarps * 32)
    router_backward_kernel(T* dlogits, const float* dgate, const T* logits, const float* probs,
                           const int32_t* topk_idx, const int64_t* counts, const int32_t* seq_counts, int seq_len,
                           int N, int E, int k, bool renormalize, bool sigmoid, float daux_unit, float dseq_unit,
                           float zc_unit) {
  const int lane = threadIdx.x % 32;
  // d(aux)/dq[n,e] does not depend on n: load it once per lane.
  float daux[EPL];
  ROUTER_UNROLL
  for (int i = 0; i < EPL; i++) {
    const int e = lane + 32 * i;
    daux[i] = e < E ? daux_unit * float(counts[e]) : 0.f;
  }
  const int warps = gridDim.x * (blockDim.x / 32);
  for (int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; n < N; n += warps) {
    const float* pr = probs + (int64_t)n * E;
    const int32_t* idx = topk_idx + (int64_t)n * k;
    const float* dg = dgate + (int64_t)n * k;
    const int32_t* cnt = seq_counts ? seq_counts + (int64_t)(n / seq_len) * E : nullptr;
    float p[EPL], dp[EPL];
    ROUTER_UNROLL
    for (int i = 0; i < EPL; i++) {
      const int e = lane + 32 * i;
      p[i] = e < E ? pr[e] : 0.f;
      dp[i] = daux[i] + (cnt && e < E ? dseq_unit * float(cnt[e]) : 0.f);  // dq
    }
    if (sigmoid) {  // q = p / sum(p): dp = (dq - sum_j dq_j q_j) / sum(p)
      float sp = 0.f, t = 0.f;
      ROUTER_UNROLL
      for (int i = 0; i < EPL; i++) sp += p[i], t += dp[i] * p[i];
      sp = warp_sum(sp);
      t = warp_sum(t) / sp;
      ROUTER_UNROLL
      for (int i = 0; i < EPL; i++) dp[i] = (dp[i] - t) / sp;
    }
    float S = 1.f, t = 0.f;
    const bool renorm = renormalize && k > 1;
    if (renorm) {  // g_j = p_j / S: dp_i = dg_i / S - (sum_j dg_j p_j) / S^2
      S = 0.f;
      for (int j = 0; j < k; j++) {
        const float pj = pr[idx[j]];
        S += pj;
        t += dg[j] * pj;
      }
    }
    for (int j = 0; j < k; j++) {
      const int e = idx[j];
      const float v = renorm ? dg[j] / S - t / (S * S) : dg[j];
      ROUTER_UNROLL
      for (int i = 0; i < EPL; i++)
        if (lane + 32 * i == e) dp[i] += v;
    }
    // The z term's d lse / d logit is the softmax of the logits (p itself for softmax scores); lse is not
    // saved by the forward, so it is recomputed from the logits.
    float x[EPL] = {}, xs = 1.f, zc = 0.f;
    if (zc_unit != 0.f) zc = zc_unit * row_exp_lse<T, EPL>(logits + (int64_t)n * E, E, lane, x, xs);
    T* dl = dlogits + (int64_t)n * E;
    if (sigmoid) {
      ROUTER_UNROLL
      for (int i = 0; i < EPL; i++) {
        const int e = lane + 32 * i;
        if (e < E) dl[e] = from_f32<T>(dp[i] * p[i] * (1.f - p[i]) + (zc != 0.f ? zc * x[i] / xs : 0.f));
      }
    } else {
      float pdp = 0.f;
      ROUTER_UNROLL
      for (int i = 0; i < EPL; i++) pdp += p[i] * dp[i];
      pdp = warp_sum(pdp);
      ROUTER_UNROLL
      for (int i = 0; i < EPL; i++) {
        const int e = lane + 32 * i;
        if (e < E) dl[e] = from_f32<T>(p[i] * (dp[i] - pdp + zc));
      }
    }
  }
}

void check_router_shape(const char* who, int N, const RouterSpec& r) {
  SCMOE_CHECK(N >= 0, who << ": negative token count " << N);
  SCMOE_CHECK(r.E >= 1 && r.k >= 1 && r.k <= r.E, who << ": need 1 <= k <= E, got k=" << r.k << " E=" << r.E);
  SCMOE_CHECK(r.E <= kRouterMaxExperts, who << ": E=" << r.E << " experts exceed the CUDA router's limit of "
                                            << kRouterMaxExperts
                                            << " (one warp per token row, 8 experts per lane in registers)");
  SCMOE_CHECK(r.seq_len <= 0 || N % r.seq_len == 0,
              who << ": " << N << " tokens are not whole sequences of " << r.seq_len);
}

// Calls f with the experts-per-lane count for E as a compile-time constant.
template <class F>
void with_epl(int E, F&& f) {
  if (E <= 32) return f(std::integral_constant<int, 1>{});
  if (E <= 64) return f(std::integral_constant<int, 2>{});
  if (E <= 128) return f(std::integral_constant<int, 4>{});
  f(std::integral_constant<int, 8>{});
}
}  // namespace

void router_testing_set_block_cap(int cap) {
  g_block_cap = cap > 0 ? std::min(cap, kMaxRowBlocks) : kMaxRowBlocks;
}

size_t router_forward_workspace_bytes(int N, int E) {
  const size_t G = (size_t)forward_blocks(N), n = (size_t)std::max(N, 0);
  return (2 * G * (size_t)std::max(E, 0) + G + 2 * n) * 4;  // + qnorm[N] and seqpart[<= N]
}

template <class T>
void router_forward(const T* logits, int N, const RouterSpec& r, float* probs, int32_t* topk_idx,
                    float* topk_gate, float* pmean, int64_t* counts, int32_t* seq_counts, float* losses,
                    void* workspace, cudaStream_t stream) {
  check_router_shape("router_forward", N, r);
  const int G = forward_blocks(N), E = r.E;
  float* ppart = static_cast<float*>(workspace);
  int* cpart = reinterpret_cast<int*>(ppart + (size_t)G * E);
  float* zpart = reinterpret_cast<float*>(cpart + (size_t)G * E);
  float* qnorm = zpart + G;
  float* seqpart = qnorm + std::max(N, 0);
  if (G > 0)
    with_epl(E, [&](auto epl) {
      launch(router_rows_kernel<T, decltype(epl)::value>, G, kWarps * 32, 0, stream, logits, N, E, r.k,
             r.renormalize, r.sigmoid, r.bias, probs, topk_idx, topk_gate, qnorm, ppart, cpart, zpart);
    });
  const int64_t S = r.sequences(N);
  if (S > 0)
    launch(router_seq_kernel, unsigned(S), kFinalThreads, 0, stream, probs, qnorm, topk_idx, r.seq_len, E, r.k,
           seq_counts, seqpart);
  launch(router_final_kernel, 1, kFinalThreads, 0, stream, ppart, cpart, zpart, G, seqpart, S, N, E, r.k, pmean,
         counts, losses);
}

template <class T>
void router_backward(T* dlogits, const float* dgate, const T* logits, const float* probs,
                     const int32_t* topk_idx, const int64_t* counts, const int32_t* seq_counts, int N,
                     const RouterSpec& r, const RouterGradScales& sc, cudaStream_t stream) {
  check_router_shape("router_backward", N, r);
  if (N == 0) return;
  const int E = r.E, k = r.k;
  const int64_t S = r.sequences(N);
  const float daux_unit = float(sc.aux * E / (double(N) * k) / N);
  const float dseq_unit = S > 0 ? float(sc.seq * E / (double(k) * r.seq_len) / r.seq_len / double(S)) : 0.f;
  const float zc_unit = float(sc.z * 2.0 / N);
  const unsigned blocks = std::min<unsigned>(ceil_div(N, kWarps), 65535u * 4);
  with_epl(E, [&](auto epl) {
    launch(router_backward_kernel<T, decltype(epl)::value>, blocks, kWarps * 32, 0, stream, dlogits, dgate, logits,
           probs, topk_idx, counts, S > 0 ? seq_counts : nullptr, r.seq_len, N, E, k, r.renormalize, r.sigmoid,
           daux_unit, dseq_unit, zc_unit);
  });
}

// The expert bias after a step, and the step's loads (cpu::expert_bias_update / add_counts): one thread.
__global__ void expert_bias_update_kernel(float* bias, int64_t* load, int E, double rate, bool center) {
  if (threadIdx.x == 0 && blockIdx.x == 0) apply_expert_bias_rule(bias, load, E, rate, center);
}
__global__ void add_counts_kernel(int64_t* load, const int64_t* counts, int E) {
  for (int e = threadIdx.x; e < E; e += blockDim.x) load[e] += counts[e];
}

void expert_bias_update(float* bias, int64_t* load, int E, double rate, bool center, cudaStream_t stream) {
  launch(expert_bias_update_kernel, 1, 32, 0, stream, bias, load, E, rate, center);
}
void add_counts(int64_t* load, const int64_t* counts, int E, cudaStream_t stream) {
  launch(add_counts_kernel, 1, 256, 0, stream, load, counts, E);
}

// Noisy gating (router.h), grid-stride over the N*E logits.
template <class T>
__global__ void gate_noise_forward_kernel(T* logits, const T* noise_pre, const float* eps, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float z = to_f32(noise_pre[i]);
    const float softplus = z > 20.f ? z : log1pf(expf(z));
    logits[i] = from_f32<T>(to_f32(logits[i]) + eps[i] * softplus);
  }
}

template <class T>
__global__ void gate_noise_backward_kernel(T* dlogits, const T* noise_pre, const float* eps, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dlogits[i] = from_f32<T>(to_f32(dlogits[i]) * eps[i] / (1.f + expf(-to_f32(noise_pre[i]))));
}

template <class T>
void gate_noise_forward(T* logits, const T* noise_pre, const float* eps, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  launch(gate_noise_forward_kernel<T>, grid_stride_blocks(n, 256), 256, 0, stream, logits, noise_pre, eps, n);
}

template <class T>
void gate_noise_backward(T* dlogits, const T* noise_pre, const float* eps, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  launch(gate_noise_backward_kernel<T>, grid_stride_blocks(n, 256), 256, 0, stream, dlogits, noise_pre, eps, n);
}

// The router's statistics for the all-reduce over ranks, and back (cpu::router_stats_pack/unpack):
// one thread, E values, in the CPU's order and arithmetic (double).
__global__ void router_stats_pack_kernel(double* buf, const int64_t* counts, const float* pmean, const float* losses,
                                         int N, int64_t S, int E) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  for (int e = 0; e < E; e++) buf[e] = double(counts[e]), buf[E + e] = double(pmean[e]) * N;
  buf[2 * E] = double(losses[1]) * N;
  buf[2 * E + 1] = double(losses[2]) * double(S);
}
__global__ void router_stats_unpack_kernel(int64_t* counts, float* losses, const double* buf, int64_t N_global,
                                           int64_t S_global, int k, int E) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  const double Ng = double(N_global);
  double aux = 0;
  for (int e = 0; e < E; e++) {
    counts[e] = (int64_t)llround(buf[e]);
    aux += (buf[E + e] / Ng) * buf[e] / (Ng * k);
  }
  losses[0] = float(aux * E);
  losses[1] = float(buf[2 * E] / Ng);
  losses[2] = S_global > 0 ? float(buf[2 * E + 1] / double(S_global)) : 0.f;
}

void router_stats_pack(double* buf, const int64_t* counts, const float* pmean, const float* losses, int N, int64_t S,
                       int E, cudaStream_t stream) {
  launch(router_stats_pack_kernel, 1, 32, 0, stream, buf, counts, pmean, losses, N, S, E);
}
void router_stats_unpack(int64_t* counts, float* losses, const double* buf, int64_t N_global, int64_t S_global, int k,
                         int E, cudaStream_t stream) {
  launch(router_stats_unpack_kernel, 1, 32, 0, stream, counts, losses, buf, N_global, S_global, k, E);
}

template void gate_noise_forward<float>(float*, const float*, const float*, int64_t, cudaStream_t);
template void gate_noise_forward<bf16>(bf16*, const bf16*, const float*, int64_t, cudaStream_t);
template void gate_noise_backward<float>(float*, const float*, const float*, int64_t, cudaStream_t);
template void gate_noise_backward<bf16>(bf16*, const bf16*, const float*, int64_t, cudaStream_t);

template void router_forward<float>(const float*, int, const RouterSpec&, float*, int32_t*, float*, float*,
                                    int64_t*, int32_t*, float*, void*, cudaStream_t);
template void router_forward<bf16>(const bf16*, int, const RouterSpec&, float*, int32_t*, float*, float*,
                                   int64_t*, int32_t*, float*, void*, cudaStream_t);
template void router_backward<float>(float*, const float*, const float*, const float*, const int32_t*,
                                     const int64_t*, const int32_t*, int, const RouterSpec&,
                                     const RouterGradScales&, cudaStream_t);
template void router_backward<bf16>(bf16*, const float*, const bf16*, const float*, const int32_t*,
                                    const int64_t*, const int32_t*, int, const RouterSpec&,
                                    const RouterGradScales&, cudaStream_t);

SCMOE_CUDA_END
