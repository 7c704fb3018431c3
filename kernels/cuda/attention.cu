// Causal attention kernels (see attention.h): path (a) is llm.c's permute / batched GEMM / fused softmax /
// batched GEMM / unpermute, with the GEMMs from matmul.cu; path (b) is a flash-style set of fused kernels
// (online softmax forward; deterministic backward in two kernels, one per key tile for dK and dV and one
// per query tile for dQ, so no float atomics are needed).
#include "kernels/cuda/attention.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/matmul.h"

SCMOE_CUDA_BEGIN

namespace {

float softmax_scale(int hd) { return float(1.0 / std::sqrt(double(hd))); }

void check_shape(int B, int Tn, int C, int H) {
  SCMOE_CHECK(B > 0 && Tn > 0 && H > 0 && C % H == 0,
              "attention: bad shape B=" << B << " T=" << Tn << " C=" << C << " H=" << H);
}

// ---- Path (a) -------------------------------------------------------------------------------------------
// rows [B][T][row_stride] with `mats` matrices of C channels side by side <-> heads [mats][B][H][T][hd].
// One thread per element; consecutive threads walk hd, contiguous on both sides.
template <class T, bool kToHeads>
__global__ void permute_heads_kernel(T* dst, const T* src, int mats, int B, int Tn, int C, int H,
                                     int row_stride) {
  const int hd = C / H;
  const int64_t n = (int64_t)mats * B * Tn * C;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    // i indexes heads[m][b][h][t][d], j the same element in rows
    const int d = int(i % hd);
    int64_t r = i / hd;
    const int t = int(r % Tn);
    r /= Tn;
    const int h = int(r % H);
    r /= H;
    const int b = int(r % B);
    const int m = int(r / B);
    const int64_t j = ((int64_t)b * Tn + t) * row_stride + (int64_t)m * C + h * hd + d;
    if (kToHeads)
      dst[i] = src[j];
    else
      dst[j] = src[i];
  }
}

template <class T, bool kToHeads>
void permute_heads(T* dst, const T* src, int mats, int B, int Tn, int C, int H, int row_stride,
                   cudaStream_t stream) {
  const int64_t n = (int64_t)mats * B * Tn * C;
  const unsigned blocks = grid_stride_blocks(n, 256);
  launch(permute_heads_kernel<T, kToHeads>, blocks, 256, 0, stream, dst, src, mats, B, Tn, C, H, row_stride);
}
template <class T>
void to_heads(T* heads, const T* rows, int mats, int B, int Tn, int C, int H, int row_stride,
              cudaStream_t stream) {
  permute_heads<T, true>(heads, rows, mats, B, Tn, C, H, row_stride, stream);
}
template <class T>
void from_heads(T* rows, const T* heads, int mats, int B, int Tn, int C, int H, int row_stride,
                cudaStream_t stream) {
  permute_heads<T, false>(rows, heads, mats, B, Tn, C, H, row_stride, stream);
}

// In place over att [rows][T] (row index = (b*H + h)*T + t) holding scaled scores: causal softmax, one warp
// per row with an online max/sum (one read pass for the statistics, one read/write pass), zeros above the
// diagonal so that att @ v can run over whole rows.
template <class T>
__global__ void causal_softmax_forward_kernel(T* att, int64_t rows, int Tn) {
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;  // the whole warp leaves together
  const int t = int(row % Tn);
  T* a = att + row * Tn;
  float m = -INFINITY, s = 0.f;
  for (int j = lane; j <= t; j += 32) {
    const float x = to_f32(a[j]), mn = fmaxf(m, x);
    s = s * expf(m - mn) + expf(x - mn);
    m = mn;
  }
  const float M = warp_max(m);  // finite: lane 0 saw key 0
  const float S = warp_sum(s * expf(m - M));
  const float inv = 1.f / S;
  for (int j = lane; j < Tn; j += 32) a[j] = from_f32<T>(j <= t ? expf(to_f32(a[j]) - M) * inv : 0.f);
}

// In place over datt: d(scores) = att * (datt - sum(att * datt)) * scale (the scale of the scores' GEMM
// folded in), zeros above the diagonal.
template <class T>
__global__ void causal_softmax_backward_kernel(T* datt, const T* att, int64_t rows, int Tn, float scale) {
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const int t = int(row % Tn);
  T* d = datt + row * Tn;
  const T* a = att + row * Tn;
  float dot = 0.f;
  for (int j = lane; j <= t; j += 32) dot += to_f32(a[j]) * to_f32(d[j]);
  dot = warp_sum(dot);
  for (int j = lane; j < Tn; j += 32)
    d[j] = from_f32<T>(j <= t ? to_f32(a[j]) * (to_f32(d[j]) - dot) * scale : 0.f);
}

unsigned row_blocks(int64_t rows) { return ceil_div(rows, 8); }  // 8 warps (rows) per 256-thread block

// ---- Path (b): flash ------------------------------------------------------------------------------------
// 256 threads as a 16 x 16 grid; tiles of BT queries by BT keys staged as fp32 in shared memory (rows padded
// by one float so that column walks hit distinct banks). Thread (tx, ty) owns the score elements
// (ty + 16i, tx + 16j) and the output elements (row ty + 16i, channel tx + 16j).
constexpr int kFlashThreads = 256;

template <int HD, int BT>
struct FlashShape {
  static constexpr int R = BT / 16;          // rows (and score columns) per thread
  static constexpr int DJ = (HD + 15) / 16;  // channels per thread
  static constexpr int LD = HD + 1;          // padded row of a q/k/v tile
  static constexpr int PL = BT + 1;          // padded row of a score tile
};

// Stages rows [r0, r0 + BT) of one head's q, k or v (at channel offset `off` of qkv's rows) as fp32; rows
// past the sequence are zeros (finite, so masked products stay finite).
template <class T, int HD, int BT>
__device__ __forceinline__ void load_tile(float* dst, const T* base, int r0, int Tn, int64_t row_stride) {
  constexpr int LD = HD + 1;
  for (int idx = threadIdx.x; idx < BT * HD; idx += kFlashThreads) {
    const int r = idx / HD, d = idx % HD, t = r0 + r;
    dst[r * LD + d] = t < Tn ? to_f32(base[(int64_t)t * row_stride + d]) : 0.f;
  }
}

template <int HD, int BT>
size_t flash_forward_smem() {
  using S = FlashShape<HD, BT>;
  return sizeof(float) * (3 * BT * S::LD + BT * S::PL + 3 * BT);
}

template <class T, int HD>
__global__ void __launch_bounds__(kFlashThreads)
    flash_forward_kernel(T* out, float* lse, const T* qkv, int Tn, int C, int H, float scale) {
  constexpr int BT = 64;
  using S = FlashShape<HD, BT>;
  constexpr int R = S::R, DJ = S::DJ, LD = S::LD, PL = S::PL;
  constexpr int GROUP = kFlashThreads / BT;  // threads per row in the softmax step
  SCMOE_DYNAMIC_SHARED(float, smem);
  float* Qs = smem;
  float* Ks = Qs + BT * LD;
  float* Vs = Ks + BT * LD;
  float* Ps = Vs + BT * LD;
  float* m_s = Ps + BT * PL;                    // running max per query row
  float* l_s = m_s + BT;                        // running sum
  float* a_s = l_s + BT;                        // this tile's rescaling of the row's accumulator
  const int tile = gridDim.x - 1 - blockIdx.x;  // the last query tiles see the most keys: start them first
  const int bh = blockIdx.y, b = bh / H, h = bh % H, q0 = tile * BT;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t C3 = 3 * (int64_t)C;
  const T* base = qkv + (int64_t)b * Tn * C3 + h * HD;

  load_tile<T, HD, BT>(Qs, base, q0, Tn, C3);
  if (tid < BT) m_s[tid] = -INFINITY, l_s[tid] = 0.f;
  float o[R][DJ] = {};
  // Causal: key tiles past the last query of this tile are skipped; padding rows (q >= T) are treated as
  // row T-1 so that every row has a key in the first tile and the statistics stay finite.
  const int kend = min(Tn, q0 + BT);
  for (int k0 = 0; k0 < kend; k0 += BT) {
    load_tile<T, HD, BT>(Ks, base + C, k0, Tn, C3);
    load_tile<T, HD, BT>(Vs, base + 2 * C, k0, Tn, C3);
    __syncthreads();
    // Scores of the tile, masked.
    for (int i = 0; i < R; i++)
      for (int j = 0; j < R; j++) {
        const int r = ty + 16 * i, c = tx + 16 * j;
        const float* q = Qs + r * LD;
        const float* k = Ks + c * LD;
        float acc = 0.f;
        for (int d = 0; d < HD; d++) acc += q[d] * k[d];
        const int qi = min(q0 + r, Tn - 1);
        Ps[r * PL + c] = k0 + c <= qi ? acc * scale : -INFINITY;
      }
    __syncthreads();
    // Online softmax: GROUP neighbouring lanes share a row.
    {
      const int r = tid / GROUP, g = tid % GROUP;
      float* p = Ps + r * PL;
      float mx = -INFINITY;
      for (int c = g; c < BT; c += GROUP) mx = fmaxf(mx, p[c]);
      for (int w = GROUP / 2; w > 0; w >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, w));
      const float m_old = m_s[r], m_new = fmaxf(m_old, mx);
      float sum = 0.f;
      for (int c = g; c < BT; c += GROUP) {
        const float e = expf(p[c] - m_new);
        p[c] = e;
        sum += e;
      }
      for (int w = GROUP / 2; w > 0; w >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, w);
      const float alpha = expf(m_old - m_new);  // 0 on the first tile (m_old = -inf)
      if (g == 0) m_s[r] = m_new, l_s[r] = l_s[r] * alpha + sum, a_s[r] = alpha;
    }
    __syncthreads();
    // O = O * alpha + P V
    for (int i = 0; i < R; i++) {
      const float alpha = a_s[ty + 16 * i];
      for (int j = 0; j < DJ; j++) o[i][j] *= alpha;
    }
    for (int c = 0; c < BT; c++) {
      float v[DJ];
      for (int j = 0; j < DJ; j++) {
        const int d = tx + 16 * j;
        v[j] = d < HD ? Vs[c * LD + d] : 0.f;
      }
      for (int i = 0; i < R; i++) {
        const float p = Ps[(ty + 16 * i) * PL + c];
        for (int j = 0; j < DJ; j++) o[i][j] += p * v[j];
      }
    }
    __syncthreads();  // the next tile overwrites Ks, Vs and Ps
  }
  for (int i = 0; i < R; i++) {
    const int r = ty + 16 * i, q = q0 + r;
    if (q >= Tn) continue;
    const float inv = 1.f / l_s[r];
    for (int j = 0; j < DJ; j++) {
      const int d = tx + 16 * j;
      if (d < HD) out[((int64_t)b * Tn + q) * C + h * HD + d] = from_f32<T>(o[i][j] * inv);
    }
  }
  if (tid < BT && q0 + tid < Tn) lse[(int64_t)bh * Tn + q0 + tid] = m_s[tid] + logf(l_s[tid]);
}

// delta[b][h][t] = sum_d dout * out over the head's channels: one warp per (b, t, h).
template <class T>
__global__ void flash_delta_kernel(float* delta, const T* dout, const T* out, int B, int Tn, int C, int H) {
  const int lane = threadIdx.x % 32, hd = C / H;
  const int64_t row = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;  // (b*T + t)*H + h
  if (row >= (int64_t)B * Tn * H) return;
  const int h = int(row % H);
  const int64_t bt = row / H;
  const int t = int(bt % Tn), b = int(bt / Tn);
  const T* dy = dout + bt * C + h * hd;
  const T* y = out + bt * C + h * hd;
  float s = 0.f;
  for (int d = lane; d < hd; d += 32) s += to_f32(dy[d]) * to_f32(y[d]);
  s = warp_sum(s);
  if (lane == 0) delta[((int64_t)b * H + h) * Tn + t] = s;
}

template <int HD, int BT>
size_t flash_backward_smem() {
  using S = FlashShape<HD, BT>;
  return sizeof(float) * (4 * BT * S::LD + 2 * BT * S::PL + 2 * BT);
}

// Recomputes the probabilities P = exp(scale * q.k - lse) and dS = P * (dout.v - delta) of the thread's
// score elements for query tile q0 and key tile k0 (both staged), and stores them (P only when Ps).
template <int HD, int BT>
__device__ __forceinline__ void flash_scores_backward(float* Ps, float* dSs, const float* Qs,
                                                      const float* dOs, const float* Ks, const float* Vs,
                                                      const float* lse_s, const float* dl_s, int q0, int k0,
                                                      int Tn, float scale) {
  using S = FlashShape<HD, BT>;
  constexpr int R = S::R, LD = S::LD, PL = S::PL;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  for (int i = 0; i < R; i++)
    for (int j = 0; j < R; j++) {
      const int r = ty + 16 * i, c = tx + 16 * j, q = q0 + r, k = k0 + c;
      const float *qr = Qs + r * LD, *kr = Ks + c * LD, *gr = dOs + r * LD, *vr = Vs + c * LD;
      float s = 0.f, dp = 0.f;
      for (int d = 0; d < HD; d++) s += qr[d] * kr[d], dp += gr[d] * vr[d];
      const float p = (q < Tn && k <= q) ? expf(s * scale - lse_s[r]) : 0.f;
      if (Ps) Ps[r * PL + c] = p;
      dSs[r * PL + c] = p * (dp - dl_s[r]);
    }
}

// Stages lse and delta of query rows [q0, q0 + BT) (zeros past the sequence; those rows are masked).
template <int BT>
__device__ __forceinline__ void load_row_stats(float* lse_s, float* dl_s, const float* lse,
                                               const float* delta, int q0, int Tn) {
  for (int r = threadIdx.x; r < BT; r += kFlashThreads) {
    const bool in = q0 + r < Tn;
    lse_s[r] = in ? lse[q0 + r] : 0.f;
    dl_s[r] = in ? delta[q0 + r] : 0.f;
  }
}

// dK and dV of one key tile: loops over the query tiles at and below the diagonal.
template <class T, int HD, int BT>
__global__ void __launch_bounds__(kFlashThreads)
    flash_backward_dkdv_kernel(T* dqkv, const T* dout, const T* qkv, const float* lse, const float* delta,
                               int Tn, int C, int H, float scale) {
  using S = FlashShape<HD, BT>;
  constexpr int R = S::R, DJ = S::DJ, LD = S::LD, PL = S::PL;
  SCMOE_DYNAMIC_SHARED(float, smem);
  float* Ks = smem;
  float* Vs = Ks + BT * LD;
  float* Qs = Vs + BT * LD;
  float* dOs = Qs + BT * LD;
  float* Ps = dOs + BT * LD;
  float* dSs = Ps + BT * PL;
  float* lse_s = dSs + BT * PL;
  float* dl_s = lse_s + BT;
  const int k0 = blockIdx.x * BT;  // the first key tiles see the most queries (and launch first)
  const int bh = blockIdx.y, b = bh / H, h = bh % H;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t C3 = 3 * (int64_t)C;
  const T* base = qkv + (int64_t)b * Tn * C3 + h * HD;
  const T* gbase = dout + (int64_t)b * Tn * C + h * HD;
  lse += (int64_t)bh * Tn;
  delta += (int64_t)bh * Tn;

  load_tile<T, HD, BT>(Ks, base + C, k0, Tn, C3);
  load_tile<T, HD, BT>(Vs, base + 2 * C, k0, Tn, C3);
  float dk[R][DJ] = {}, dv[R][DJ] = {};
  for (int q0 = k0; q0 < Tn; q0 += BT) {
    load_tile<T, HD, BT>(Qs, base, q0, Tn, C3);
    load_tile<T, HD, BT>(dOs, gbase, q0, Tn, C);
    load_row_stats<BT>(lse_s, dl_s, lse, delta, q0, Tn);
    __syncthreads();
    flash_scores_backward<HD, BT>(Ps, dSs, Qs, dOs, Ks, Vs, lse_s, dl_s, q0, k0, Tn, scale);
    __syncthreads();
    // dV[c] += sum_r P[r][c] dO[r]; dK[c] += sum_r dS[r][c] Q[r]
    for (int r = 0; r < BT; r++) {
      float g[DJ], q[DJ];
      for (int j = 0; j < DJ; j++) {
        const int d = tx + 16 * j;
        g[j] = d < HD ? dOs[r * LD + d] : 0.f;
        q[j] = d < HD ? Qs[r * LD + d] : 0.f;
      }
      for (int i = 0; i < R; i++) {
        const int c = ty + 16 * i;
        const float p = Ps[r * PL + c], ds = dSs[r * PL + c];
        for (int j = 0; j < DJ; j++) dv[i][j] += p * g[j], dk[i][j] += ds * q[j];
      }
    }
    __syncthreads();  // the next query tile overwrites Qs, dOs, Ps and dSs
  }
  for (int i = 0; i < R; i++) {
    const int k = k0 + ty + 16 * i;
    if (k >= Tn) continue;
    T* row = dqkv + ((int64_t)b * Tn + k) * C3 + h * HD;
    for (int j = 0; j < DJ; j++) {
      const int d = tx + 16 * j;
      if (d < HD) row[C + d] = from_f32<T>(dk[i][j] * scale), row[2 * C + d] = from_f32<T>(dv[i][j]);
    }
  }
}

// dQ of one query tile: loops over the key tiles at and below the diagonal.
template <class T, int HD, int BT>
__global__ void __launch_bounds__(kFlashThreads)
    flash_backward_dq_kernel(T* dqkv, const T* dout, const T* qkv, const float* lse, const float* delta,
                             int Tn, int C, int H, float scale) {
  using S = FlashShape<HD, BT>;
  constexpr int R = S::R, DJ = S::DJ, LD = S::LD, PL = S::PL;
  SCMOE_DYNAMIC_SHARED(float, smem);
  float* Qs = smem;
  float* dOs = Qs + BT * LD;
  float* Ks = dOs + BT * LD;
  float* Vs = Ks + BT * LD;
  float* dSs = Vs + BT * LD;
  float* lse_s = dSs + BT * PL;
  float* dl_s = lse_s + BT;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * BT;  // the last query tiles see the most keys
  const int bh = blockIdx.y, b = bh / H, h = bh % H;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t C3 = 3 * (int64_t)C;
  const T* base = qkv + (int64_t)b * Tn * C3 + h * HD;
  lse += (int64_t)bh * Tn;
  delta += (int64_t)bh * Tn;

  load_tile<T, HD, BT>(Qs, base, q0, Tn, C3);
  load_tile<T, HD, BT>(dOs, dout + (int64_t)b * Tn * C + h * HD, q0, Tn, C);
  load_row_stats<BT>(lse_s, dl_s, lse, delta, q0, Tn);
  float dq[R][DJ] = {};
  const int kend = min(Tn, q0 + BT);
  for (int k0 = 0; k0 < kend; k0 += BT) {
    load_tile<T, HD, BT>(Ks, base + C, k0, Tn, C3);
    load_tile<T, HD, BT>(Vs, base + 2 * C, k0, Tn, C3);
    __syncthreads();
    flash_scores_backward<HD, BT>(nullptr, dSs, Qs, dOs, Ks, Vs, lse_s, dl_s, q0, k0, Tn, scale);
    __syncthreads();
    // dQ[r] += sum_c dS[r][c] K[c]
    for (int c = 0; c < BT; c++) {
      float k[DJ];
      for (int j = 0; j < DJ; j++) {
        const int d = tx + 16 * j;
        k[j] = d < HD ? Ks[c * LD + d] : 0.f;
      }
      for (int i = 0; i < R; i++) {
        const float ds = dSs[(ty + 16 * i) * PL + c];
        for (int j = 0; j < DJ; j++) dq[i][j] += ds * k[j];
      }
    }
    __syncthreads();  // the next key tile overwrites Ks, Vs and dSs
  }
  for (int i = 0; i < R; i++) {
    const int q = q0 + ty + 16 * i;
    if (q >= Tn) continue;
    T* row = dqkv + ((int64_t)b * Tn + q) * C3 + h * HD;
    for (int j = 0; j < DJ; j++) {
      const int d = tx + 16 * j;
      if (d < HD) row[d] = from_f32<T>(dq[i][j] * scale);
    }
  }
}

// Backward tiles: 64 wide up to hd 64; 32 for larger heads, to stay within an A100's shared memory.
template <int HD>
constexpr int backward_tile() {
  return HD > 64 ? 32 : 64;
}

template <class T, int HD>
void flash_forward_hd(T* out, float* lse, const T* qkv, int B, int Tn, int C, int H, cudaStream_t stream) {
  const size_t smem = flash_forward_smem<HD, 64>();
  allow_smem(flash_forward_kernel<T, HD>, smem);
  launch(flash_forward_kernel<T, HD>, dim3(ceil_div(Tn, 64), B * H), dim3(kFlashThreads), smem, stream, out,
         lse, qkv, Tn, C, H, softmax_scale(HD));
}

template <class T, int HD>
void flash_backward_hd(T* dqkv, const float* delta, const T* dout, const T* qkv, const float* lse, int B,
                       int Tn, int C, int H, cudaStream_t stream) {
  constexpr int BT = backward_tile<HD>();
  const size_t smem = flash_backward_smem<HD, BT>();
  const dim3 grid(ceil_div(Tn, BT), B * H);
  allow_smem(flash_backward_dkdv_kernel<T, HD, BT>, smem);
  allow_smem(flash_backward_dq_kernel<T, HD, BT>, smem);
  launch(flash_backward_dkdv_kernel<T, HD, BT>, grid, dim3(kFlashThreads), smem, stream, dqkv, dout, qkv, lse,
         delta, Tn, C, H, softmax_scale(HD));
  launch(flash_backward_dq_kernel<T, HD, BT>, grid, dim3(kFlashThreads), smem, stream, dqkv, dout, qkv, lse,
         delta, Tn, C, H, softmax_scale(HD));
}

// Calls f.template operator()<HD>() for the instantiated head sizes.
#define SCMOE_FLASH_HEAD_SIZES(X) X(8) X(16) X(32) X(64) X(96) X(128)

}  // namespace

bool flash_attention_supports(int hd) {
#define SCMOE_CASE(n) \
  if (hd == n) return true;
  SCMOE_FLASH_HEAD_SIZES(SCMOE_CASE)
#undef SCMOE_CASE
  return false;
}

AttentionBufferSizes attention_buffer_sizes(AttentionPath path, int B, int Tn, int C, int H) {
  AttentionBufferSizes s;
  const size_t btc = (size_t)B * Tn * C, bht = (size_t)B * H * Tn;
  if (path == AttentionPath::gemm_softmax) {
    s.saved = 3 * btc + bht * Tn;
    s.scratch = 4 * btc + bht * Tn;
  } else {
    s.saved_f32 = bht;
    s.scratch_f32 = bht;
  }
  return s;
}

template <class T>
void attention_forward_gemm(T* out, T* qkvr, T* att, T* scratch, const T* qkv, int B, int Tn, int C, int H,
                            cudaStream_t stream) {
  check_shape(B, Tn, C, H);
  const int hd = C / H, BH = B * H;
  const int64_t th = (int64_t)Tn * hd, tt = (int64_t)Tn * Tn, n = (int64_t)B * Tn * C;
  T *q = qkvr, *k = qkvr + n, *v = qkvr + 2 * n;
  to_heads(qkvr, qkv, 3, B, Tn, C, H, 3 * C, stream);
  gemm_strided_batched<T, T>(false, true, Tn, Tn, hd, softmax_scale(hd), q, hd, th, k, hd, th, 0.f, att, Tn,
                             tt, BH, stream);
  launch(causal_softmax_forward_kernel<T>, row_blocks((int64_t)BH * Tn), 256, 0, stream, att,
         (int64_t)BH * Tn, Tn);
  gemm_strided_batched<T, T>(false, false, Tn, hd, Tn, 1.f, att, Tn, tt, v, hd, th, 0.f, scratch, hd, th, BH,
                             stream);
  from_heads(out, (const T*)scratch, 1, B, Tn, C, H, C, stream);
}

template <class T>
void attention_backward_gemm(T* dqkv, T* scratch, const T* dout, const T* qkvr, const T* att, int B, int Tn,
                             int C, int H, cudaStream_t stream) {
  check_shape(B, Tn, C, H);
  const int hd = C / H, BH = B * H;
  const int64_t th = (int64_t)Tn * hd, tt = (int64_t)Tn * Tn, n = (int64_t)B * Tn * C;
  const T *q = qkvr, *k = qkvr + n, *v = qkvr + 2 * n;
  T* dva = scratch;  // dout per head
  T *dq = scratch + n, *dk = dq + n, *dv = dk + n;
  T* datt = scratch + 4 * n;
  to_heads(dva, dout, 1, B, Tn, C, H, C, stream);
  gemm_strided_batched<T, T>(false, true, Tn, Tn, hd, 1.f, dva, hd, th, v, hd, th, 0.f, datt, Tn, tt, BH,
                             stream);
  gemm_strided_batched<T, T>(true, false, Tn, hd, Tn, 1.f, att, Tn, tt, dva, hd, th, 0.f, dv, hd, th, BH,
                             stream);
  launch(causal_softmax_backward_kernel<T>, row_blocks((int64_t)BH * Tn), 256, 0, stream, datt, att,
         (int64_t)BH * Tn, Tn, softmax_scale(hd));
  gemm_strided_batched<T, T>(false, false, Tn, hd, Tn, 1.f, datt, Tn, tt, k, hd, th, 0.f, dq, hd, th, BH,
                             stream);
  gemm_strided_batched<T, T>(true, false, Tn, hd, Tn, 1.f, datt, Tn, tt, q, hd, th, 0.f, dk, hd, th, BH,
                             stream);
  from_heads(dqkv, (const T*)dq, 3, B, Tn, C, H, 3 * C, stream);
}

template <class T>
void attention_forward_flash(T* out, float* lse, const T* qkv, int B, int Tn, int C, int H,
                             cudaStream_t stream) {
  check_shape(B, Tn, C, H);
  const int hd = C / H;
#define SCMOE_CASE(n) \
  if (hd == n) return flash_forward_hd<T, n>(out, lse, qkv, B, Tn, C, H, stream);
  SCMOE_FLASH_HEAD_SIZES(SCMOE_CASE)
#undef SCMOE_CASE
  SCMOE_FAIL("flash attention: head size " << hd << " is not instantiated (use the gemm_softmax path)");
}

template <class T>
void attention_backward_flash(T* dqkv, float* delta, const T* dout, const T* qkv, const T* out,
                              const float* lse, int B, int Tn, int C, int H, cudaStream_t stream) {
  check_shape(B, Tn, C, H);
  const int hd = C / H;
  SCMOE_CHECK(flash_attention_supports(hd), "flash attention: head size " << hd << " is not instantiated");
  launch(flash_delta_kernel<T>, row_blocks((int64_t)B * Tn * H), 256, 0, stream, delta, dout, out, B, Tn, C,
         H);
#define SCMOE_CASE(n) \
  if (hd == n) return flash_backward_hd<T, n>(dqkv, delta, dout, qkv, lse, B, Tn, C, H, stream);
  SCMOE_FLASH_HEAD_SIZES(SCMOE_CASE)
#undef SCMOE_CASE
}

template <class T>
void attention_forward(AttentionPath path, T* out, const T* qkv, const AttentionBuffers<T>& buf, int B,
                       int Tn, int C, int H, cudaStream_t stream) {
  if (path == AttentionPath::flash)
    return attention_forward_flash(out, buf.saved_f32, qkv, B, Tn, C, H, stream);
  attention_forward_gemm(out, buf.saved, buf.saved + 3 * (size_t)B * Tn * C, buf.scratch, qkv, B, Tn, C, H,
                         stream);
}

template <class T>
void attention_backward(AttentionPath path, T* dqkv, const T* dout, const T* qkv, const T* out,
                        const AttentionBuffers<T>& buf, int B, int Tn, int C, int H, cudaStream_t stream) {
  if (path == AttentionPath::flash)
    return attention_backward_flash(dqkv, buf.scratch_f32, dout, qkv, out, buf.saved_f32, B, Tn, C, H,
                                    stream);
  attention_backward_gemm(dqkv, buf.scratch, dout, buf.saved, buf.saved + 3 * (size_t)B * Tn * C, B, Tn, C, H,
                          stream);
}

namespace {
// One block per head: scores of the query against every cached key (threads over positions), the
// softmax over them in place, then each thread one channel of the weighted sum of the values.
template <class T>
__global__ void attention_decode_kernel(T* out, float* att, const T* q, const T* k, const T* v, int Tk, int C,
                                        int hd, float scale) {
  __shared__ float scratch[32];
  const int h = blockIdx.x;
  const T* qh = q + (size_t)h * hd;
  float* a = att + (size_t)h * Tk;
  float mx = -INFINITY;
  for (int t = threadIdx.x; t < Tk; t += blockDim.x) {
    const T* kt = k + (size_t)t * C + (size_t)h * hd;
    float s = 0.f;
    for (int i = 0; i < hd; i++) s += to_f32(qh[i]) * to_f32(kt[i]);
    s *= scale;
    a[t] = s;
    mx = fmaxf(mx, s);
  }
  mx = block_max(mx, scratch);
  float sum = 0.f;
  for (int t = threadIdx.x; t < Tk; t += blockDim.x) {
    const float e = expf(a[t] - mx);
    a[t] = e;
    sum += e;
  }
  const float inv = 1.f / block_sum(sum, scratch);
  for (int t = threadIdx.x; t < Tk; t += blockDim.x) a[t] *= inv;
  __syncthreads();  // every probability written before any thread sums over all of them
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    float o = 0.f;
    for (int t = 0; t < Tk; t++) o += a[t] * to_f32(v[(size_t)t * C + (size_t)h * hd + i]);
    out[(size_t)h * hd + i] = from_f32<T>(o);
  }
}
}  // namespace

template <class T>
void attention_decode(T* out, float* att, const T* q, const T* k, const T* v, int Tk, int C, int H,
                      cudaStream_t stream) {
  SCMOE_CHECK(Tk >= 1 && H >= 1 && C % H == 0, "attention_decode: Tk " << Tk << ", C " << C << ", H " << H);
  const int hd = C / H;
  launch(attention_decode_kernel<T>, H, 128, 0, stream, out, att, q, k, v, Tk, C, hd,
         softmax_scale(hd));
}

#define SCMOE_ATTENTION_INSTANTIATE(T)                                                                       \
  template void attention_forward<T>(AttentionPath, T*, const T*, const AttentionBuffers<T>&, int, int, int, \
                                     int, cudaStream_t);                                                     \
  template void attention_backward<T>(AttentionPath, T*, const T*, const T*, const T*,                       \
                                      const AttentionBuffers<T>&, int, int, int, int, cudaStream_t);         \
  template void attention_forward_gemm<T>(T*, T*, T*, T*, const T*, int, int, int, int, cudaStream_t);       \
  template void attention_backward_gemm<T>(T*, T*, const T*, const T*, const T*, int, int, int, int,         \
                                           cudaStream_t);                                                    \
  template void attention_forward_flash<T>(T*, float*, const T*, int, int, int, int, cudaStream_t);          \
  template void attention_backward_flash<T>(T*, float*, const T*, const T*, const T*, const float*, int,     \
                                            int, int, int, cudaStream_t);                                    \
  template void attention_decode<T>(T*, float*, const T*, const T*, const T*, int, int, int, cudaStream_t);
SCMOE_ATTENTION_INSTANTIATE(float)
SCMOE_ATTENTION_INSTANTIATE(bf16)
#undef SCMOE_ATTENTION_INSTANTIATE

SCMOE_CUDA_END
