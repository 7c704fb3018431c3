// Router kernels (see router.h). Forward: one warp per token row (softmax, top-k by warp arg-max, and
// per-warp running sums of probabilities, assignment counts and lse^2), then a single block folds the
// per-block partials in a fixed order into pmean, counts and the two losses: deterministic without
// float atomics. Backward: one warp per row.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/router.h"

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

// Top-k key: larger probability first, then lower expert index. Probabilities are >= 0, so their
// bits order like the values; NaN maps to 0 (below every number), which makes an all-NaN row pick the
// lowest free experts as the CPU's scan does. 0 itself is reserved for "taken".
__device__ __forceinline__ unsigned long long topk_key(float p, int e) {
  const unsigned hi = p > 0.f ? __float_as_uint(p) : 0u;
  return ((unsigned long long)hi << 32) | (unsigned long long)(~(unsigned)e);
}

__device__ __forceinline__ unsigned long long warp_max_u64(unsigned long long v) {
  for (int o = 16; o > 0; o >>= 1) {
    unsigned long long w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

// EPL = experts per lane (E <= 32 * EPL): the row lives in registers.
template <class T, int EPL>
__global__ void __launch_bounds__(kWarps * 32)
    router_rows_kernel(const T* logits, int N, int E, int k, bool renormalize, float* probs,
                       int32_t* topk_idx, float* topk_gate, float* ppart, int* cpart, float* zpart) {
  __shared__ float ps[kWarps][kRouterMaxExperts];
  __shared__ int cs[kWarps][kRouterMaxExperts];
  __shared__ float zs[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float psum[EPL];
  int cnt[EPL];
  ROUTER_UNROLL
  for (int i = 0; i < EPL; i++) psum[i] = 0.f, cnt[i] = 0;
  float zacc = 0.f;

  for (int n = blockIdx.x * kWarps + warp; n < N; n += gridDim.x * kWarps) {
    float p[EPL], s;
    const float lse = row_exp_lse<T, EPL>(logits + (int64_t)n * E, E, lane, p, s);
    zacc += lse * lse;
    float* pr = probs + (int64_t)n * E;
    ROUTER_UNROLL
    for (int i = 0; i < EPL; i++) {
      const int e = lane + 32 * i;
      p[i] = p[i] / s;
      if (e < E) pr[e] = p[i], psum[i] += p[i];
    }

    // k rounds of warp arg-max over the experts not yet taken.
    unsigned taken = 0;
    float gsum = 0.f;
    for (int j = 0; j < k; j++) {
      unsigned long long best = 0;
      ROUTER_UNROLL
      for (int i = 0; i < EPL; i++) {
        const int e = lane + 32 * i;
        if (e < E && !((taken >> i) & 1u)) {
          const unsigned long long key = topk_key(p[i], e);
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

// One block: partials of G row blocks -> pmean, counts, losses.
__global__ void __launch_bounds__(kFinalThreads)
    router_final_kernel(const float* ppart, const int* cpart, const float* zpart, int G, int N, int E, int k,
                        float* pmean, int64_t* counts, float* losses) {
  __shared__ float scratch[32];
  float aux = 0.f, z = 0.f;
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
  aux = block_sum(aux, scratch);
  z = block_sum(z, scratch);
  if (threadIdx.x == 0) {
    losses[0] = N > 0 ? aux * float(E) / (float(N) * float(k)) : 0.f;
    losses[1] = N > 0 ? z / float(N) : 0.f;
  }
}

template <class T, int EPL>
__global__ void __launch_bounds__(kWarps * 32)
    router_backward_kernel(T* dlogits, const float* dgate, const T* logits, const float* probs,
                           const int32_t* topk_idx, const int64_t* counts, int N, int E, int k,
                           bool renormalize, float daux_unit, float zc_unit) {
  const int lane = threadIdx.x % 32;
  // d(aux)/dp[n,e] does not depend on n: load it once per lane.
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
    float p[EPL], dp[EPL];
    ROUTER_UNROLL
    for (int i = 0; i < EPL; i++) {
      const int e = lane + 32 * i;
      p[i] = e < E ? pr[e] : 0.f;
      dp[i] = daux[i];
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
    float pdp = 0.f;
    ROUTER_UNROLL
    for (int i = 0; i < EPL; i++) pdp += p[i] * dp[i];
    pdp = warp_sum(pdp);
    float zc = 0.f;
    if (zc_unit != 0.f) {  // lse is not saved by the forward; recompute it from the logits
      float x[EPL], s;
      zc = zc_unit * row_exp_lse<T, EPL>(logits + (int64_t)n * E, E, lane, x, s);
    }
    T* dl = dlogits + (int64_t)n * E;
    ROUTER_UNROLL
    for (int i = 0; i < EPL; i++) {
      const int e = lane + 32 * i;
      if (e < E) dl[e] = from_f32<T>(p[i] * (dp[i] - pdp + zc));
    }
  }
}

void check_router_shape(const char* who, int N, int E, int k) {
  SCMOE_CHECK(N >= 0, who << ": negative token count " << N);
  SCMOE_CHECK(E >= 1 && k >= 1 && k <= E, who << ": need 1 <= k <= E, got k=" << k << " E=" << E);
  SCMOE_CHECK(E <= kRouterMaxExperts, who << ": E=" << E << " experts exceed the CUDA router's limit of "
                                          << kRouterMaxExperts
                                          << " (one warp per token row, 8 experts per lane in registers)");
}

template <class T, int EPL>
void forward_rows(const T* logits, int N, int E, int k, bool renormalize, float* probs, int32_t* topk_idx,
                  float* topk_gate, float* ppart, int* cpart, float* zpart, int G, cudaStream_t stream) {
  launch(router_rows_kernel<T, EPL>, G, kWarps * 32, 0, stream, logits, N, E, k, renormalize, probs, topk_idx,
         topk_gate, ppart, cpart, zpart);
}

template <class T, int EPL>
void backward_rows(T* dlogits, const float* dgate, const T* logits, const float* probs,
                   const int32_t* topk_idx, const int64_t* counts, int N, int E, int k, bool renormalize,
                   float daux_unit, float zc_unit, cudaStream_t stream) {
  const unsigned blocks = std::min<unsigned>(ceil_div(N, kWarps), 65535u * 4);
  launch(router_backward_kernel<T, EPL>, blocks, kWarps * 32, 0, stream, dlogits, dgate, logits, probs,
         topk_idx, counts, N, E, k, renormalize, daux_unit, zc_unit);
}
}  // namespace

void router_testing_set_block_cap(int cap) {
  g_block_cap = cap > 0 ? std::min(cap, kMaxRowBlocks) : kMaxRowBlocks;
}

size_t router_forward_workspace_bytes(int N, int E) {
  const size_t G = (size_t)forward_blocks(N);
  return (2 * G * (size_t)std::max(E, 0) + G) * 4;
}

template <class T>
void router_forward(const T* logits, int N, int E, int k, bool renormalize, float* probs, int32_t* topk_idx,
                    float* topk_gate, float* pmean, int64_t* counts, float* losses, void* workspace,
                    cudaStream_t stream) {
  check_router_shape("router_forward", N, E, k);
  const int G = forward_blocks(N);
  float* ppart = static_cast<float*>(workspace);
  int* cpart = reinterpret_cast<int*>(ppart + (size_t)G * E);
  float* zpart = reinterpret_cast<float*>(cpart + (size_t)G * E);
  if (G > 0) {
    if (E <= 32)
      forward_rows<T, 1>(logits, N, E, k, renormalize, probs, topk_idx, topk_gate, ppart, cpart, zpart, G,
                         stream);
    else if (E <= 64)
      forward_rows<T, 2>(logits, N, E, k, renormalize, probs, topk_idx, topk_gate, ppart, cpart, zpart, G,
                         stream);
    else if (E <= 128)
      forward_rows<T, 4>(logits, N, E, k, renormalize, probs, topk_idx, topk_gate, ppart, cpart, zpart, G,
                         stream);
    else
      forward_rows<T, 8>(logits, N, E, k, renormalize, probs, topk_idx, topk_gate, ppart, cpart, zpart, G,
                         stream);
  }
  launch(router_final_kernel, 1, kFinalThreads, 0, stream, ppart, cpart, zpart, G, N, E, k, pmean, counts,
         losses);
}

template <class T>
void router_backward(T* dlogits, const float* dgate, const T* logits, const float* probs,
                     const int32_t* topk_idx, const int64_t* counts, int N, int E, int k, bool renormalize,
                     float aux_scale, float z_scale, cudaStream_t stream) {
  check_router_shape("router_backward", N, E, k);
  if (N == 0) return;
  const float daux_unit = float(double(aux_scale) * E / (double(N) * k) / N);
  const float zc_unit = float(double(z_scale) * 2.0 / N);
  if (E <= 32)
    backward_rows<T, 1>(dlogits, dgate, logits, probs, topk_idx, counts, N, E, k, renormalize, daux_unit,
                        zc_unit, stream);
  else if (E <= 64)
    backward_rows<T, 2>(dlogits, dgate, logits, probs, topk_idx, counts, N, E, k, renormalize, daux_unit,
                        zc_unit, stream);
  else if (E <= 128)
    backward_rows<T, 4>(dlogits, dgate, logits, probs, topk_idx, counts, N, E, k, renormalize, daux_unit,
                        zc_unit, stream);
  else
    backward_rows<T, 8>(dlogits, dgate, logits, probs, topk_idx, counts, N, E, k, renormalize, daux_unit,
                        zc_unit, stream);
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
                                         int N, int E) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  for (int e = 0; e < E; e++) buf[e] = double(counts[e]), buf[E + e] = double(pmean[e]) * N;
  buf[2 * E] = double(losses[1]) * N;
}
__global__ void router_stats_unpack_kernel(int64_t* counts, float* losses, const double* buf, int64_t N_global, int k,
                                           int E) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  const double Ng = double(N_global);
  double aux = 0;
  for (int e = 0; e < E; e++) {
    counts[e] = (int64_t)llround(buf[e]);
    aux += (buf[E + e] / Ng) * buf[e] / (Ng * k);
  }
  losses[0] = float(aux * E);
  losses[1] = float(buf[2 * E] / Ng);
}

void router_stats_pack(double* buf, const int64_t* counts, const float* pmean, const float* losses, int N, int E,
                       cudaStream_t stream) {
  launch(router_stats_pack_kernel, 1, 32, 0, stream, buf, counts, pmean, losses, N, E);
}
void router_stats_unpack(int64_t* counts, float* losses, const double* buf, int64_t N_global, int k, int E,
                         cudaStream_t stream) {
  launch(router_stats_unpack_kernel, 1, 32, 0, stream, counts, losses, buf, N_global, k, E);
}

template void gate_noise_forward<float>(float*, const float*, const float*, int64_t, cudaStream_t);
template void gate_noise_forward<bf16>(bf16*, const bf16*, const float*, int64_t, cudaStream_t);
template void gate_noise_backward<float>(float*, const float*, const float*, int64_t, cudaStream_t);
template void gate_noise_backward<bf16>(bf16*, const bf16*, const float*, int64_t, cudaStream_t);

template void router_forward<float>(const float*, int, int, int, bool, float*, int32_t*, float*, float*,
                                    int64_t*, float*, void*, cudaStream_t);
template void router_forward<bf16>(const bf16*, int, int, int, bool, float*, int32_t*, float*, float*,
                                   int64_t*, float*, void*, cudaStream_t);
template void router_backward<float>(float*, const float*, const float*, const float*, const int32_t*,
                                     const int64_t*, int, int, int, bool, float, float, cudaStream_t);
template void router_backward<bf16>(bf16*, const float*, const bf16*, const float*, const int32_t*,
                                    const int64_t*, int, int, int, bool, float, float, cudaStream_t);

SCMOE_CUDA_END
