// LayerNorm / RMSNorm kernels (see norm.h). Forward: one warp per row (norm_row.cuh). Backward: one
// block per group of rows, each thread owning fixed channels, so dw/db accumulate without races in
// shared memory; each block then writes its partial sums and add_partials (partials.cuh) reduces them
// in a fixed order.
#include <initializer_list>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/norm.h"
#include "kernels/cuda/norm_row.cuh"
#include "kernels/cuda/partials.cuh"
#include "kernels/cuda/vec.cuh"

SCMOE_CUDA_BEGIN

namespace {
constexpr int kFwdThreads = 256;      // 8 rows (warps) per block
constexpr int kBwdRowsPerBlock = 16;  // amortises writing each block's 2*C partials over many rows
constexpr int kBwdMaxBlocks = 1024;   // bounds the workspace and the second stage's work
constexpr int kBwdMaxThreads = 256;

int bwd_blocks(int N) { return std::max(1, std::min<int>(ceil_div(N, kBwdRowsPerBlock), kBwdMaxBlocks)); }

template <bool RMS, int VEC, class T>
__global__ void norm_forward_kernel(T* out, float* mean, float* rstd, const T* inp, const T* w, const T* b,
                                    int N, int C) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= N) return;  // whole warps leave; no block barrier follows
  const int64_t off = (int64_t)row * C;
  norm_row_forward<RMS, VEC>(out + off, RMS ? nullptr : mean + row, rstd + row, inp + off, w, b, C,
                             int(threadIdx.x % 32));
}

// Thread t owns the packs starting at channels (t + j*blockDim) * VEC for every row of the block, and
// keeps their dw (and db) sums in shared memory `acc` that only it touches, laid out
// [quantity][j][k][thread] so that a warp's accesses fall on consecutive words (no bank conflicts). Per row,
// the two row sums (of dn = w*dout and of dn*xhat) are combined across warps through `red`, double-buffered
// by row parity so that one barrier per row suffices: a thread can only overwrite a buffer two rows later,
// after every thread has passed the barrier of the row in between (and so has read it).
template <bool RMS, int VEC, class T>
__global__ void norm_backward_kernel(T* dinp, float* partial, const T* dout, const T* inp, const T* w,
                                     const float* mean, const float* rstd, int N, int C, bool accumulate) {
  constexpr int NP = RMS ? 1 : 2;    // accumulated quantities per channel: dw (and db)
  SCMOE_DYNAMIC_SHARED(float, acc);  // [NP][J][VEC][blockDim], J = packs per thread (rounded up)
  __shared__ float red[2][2][32];    // [row parity][sum][warp]
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, nwarps = blockDim.x / 32;
  const int step = blockDim.x * VEC, nt = blockDim.x;
  const int J = (C / VEC + nt - 1) / nt;
  auto slot = [&](int q, int j, int k) -> float& { return acc[((q * J + j) * VEC + k) * nt + tid]; };
  for (int j = 0, c = tid * VEC; c < C; c += step, j++)
    for (int k = 0; k < VEC; k++)
      for (int q = 0; q < NP; q++) slot(q, j, k) = 0.f;

  int parity = 0;
  for (int row = blockIdx.x; row < N; row += gridDim.x, parity ^= 1) {
    const int64_t off = (int64_t)row * C;
    const T *x = inp + off, *d = dout + off;
    const float m = RMS ? 0.f : mean[row], s = rstd[row];
    float sum_dn = 0.f, sum_dn_xh = 0.f;
    for (int c = tid * VEC; c < C; c += step) {
      float xv[VEC], dv[VEC], wv[VEC];
      load_f32(xv, x + c);
      load_f32(dv, d + c);
      load_f32(wv, w + c);
      SCMOE_UNROLL
      for (int k = 0; k < VEC; k++) {
        const float dn = wv[k] * dv[k];
        sum_dn += dn;
        sum_dn_xh += dn * (xv[k] - m) * s;
      }
    }
    if constexpr (!RMS) sum_dn = warp_sum(sum_dn);
    sum_dn_xh = warp_sum(sum_dn_xh);
    if (lane == 0) red[parity][0][warp] = sum_dn, red[parity][1][warp] = sum_dn_xh;
    __syncthreads();
    float mean_dn = 0.f, mean_dn_xh = 0.f;
    for (int i = 0; i < nwarps; i++) {  // the same order in every thread
      if constexpr (!RMS) mean_dn += red[parity][0][i];
      mean_dn_xh += red[parity][1][i];
    }
    mean_dn /= float(C);
    mean_dn_xh /= float(C);

    T* di = dinp + off;
    for (int j = 0, c = tid * VEC; c < C; c += step, j++) {
      float xv[VEC], dv[VEC], wv[VEC], g[VEC];
      load_f32(xv, x + c);
      load_f32(dv, d + c);
      load_f32(wv, w + c);
      if (accumulate) load_f32(g, di + c);
      SCMOE_UNROLL
      for (int k = 0; k < VEC; k++) {
        const float xh = (xv[k] - m) * s;
        const float gk = (wv[k] * dv[k] - mean_dn - xh * mean_dn_xh) * s;
        g[k] = accumulate ? g[k] + gk : gk;
        slot(0, j, k) += xh * dv[k];
        if constexpr (!RMS) slot(1, j, k) += dv[k];
      }
      store_f32(di + c, g);
    }
  }
  float* p = partial + (int64_t)blockIdx.x * NP * C;
  for (int j = 0, c = tid * VEC; c < C; c += step, j++)
    for (int k = 0; k < VEC; k++)
      for (int q = 0; q < NP; q++) p[q * C + c + k] = slot(q, j, k);
}

template <class T>
bool use_vec(int C, std::initializer_list<const void*> ptrs) {
  if (C % vec_width<T>() != 0) return false;
  for (const void* p : ptrs)
    if (p && !aligned16(p)) return false;
  return true;
}

template <bool RMS, class T>
void norm_forward(T* out, float* mean, float* rstd, const T* inp, const T* w, const T* b, int N, int C,
                  cudaStream_t stream) {
  if (N == 0) return;
  SCMOE_CHECK(C > 0, "norm forward: C must be positive, got " << C);
  const unsigned grid = ceil_div(N, kFwdThreads / 32);
  if (use_vec<T>(C, {out, inp, w, b}))
    launch(norm_forward_kernel<RMS, vec_width<T>(), T>, grid, kFwdThreads, 0, stream, out, mean, rstd, inp, w,
           b, N, C);
  else
    launch(norm_forward_kernel<RMS, 1, T>, grid, kFwdThreads, 0, stream, out, mean, rstd, inp, w, b, N, C);
}

template <bool RMS, int VEC, class T>
void launch_norm_backward(T* dinp, float* partial, const T* dout, const T* inp, const T* w, const float* mean,
                          const float* rstd, int N, int C, bool accumulate, int G, cudaStream_t stream) {
  const int packs = C / VEC;
  const int threads = std::min(kBwdMaxThreads, int(ceil_div(packs, 32)) * 32);
  const int per_thread = int(ceil_div(packs, threads));
  const size_t smem = size_t(RMS ? 1 : 2) * per_thread * VEC * threads * sizeof(float);
  auto kernel = norm_backward_kernel<RMS, VEC, T>;
  allow_smem(kernel, smem);
  launch(kernel, G, threads, smem, stream, dinp, partial, dout, inp, w, mean, rstd, N, C, accumulate);
}

template <bool RMS, class T>
void norm_backward(T* dinp, float* dw, float* db, const T* dout, const T* inp, const T* w, const float* mean,
                   const float* rstd, int N, int C, bool accumulate, void* workspace, size_t workspace_bytes,
                   cudaStream_t stream) {
  if (N == 0) return;
  SCMOE_CHECK(C > 0, "norm backward: C must be positive, got " << C);
  const size_t need = norm_backward_workspace_bytes(N, C);
  SCMOE_CHECK(workspace && workspace_bytes >= need, "norm backward: workspace of "
                                                        << workspace_bytes << " bytes, needs " << need
                                                        << " (norm_backward_workspace_bytes)");
  const int G = bwd_blocks(N);
  float* partial = static_cast<float*>(workspace);
  if (use_vec<T>(C, {dinp, dout, inp, w}))
    launch_norm_backward<RMS, vec_width<T>()>(dinp, partial, dout, inp, w, mean, rstd, N, C, accumulate, G,
                                              stream);
  else
    launch_norm_backward<RMS, 1>(dinp, partial, dout, inp, w, mean, rstd, N, C, accumulate, G, stream);
  add_partials(dw, db, C, partial, G, (RMS ? 1 : 2) * C, stream);
}
}  // namespace

size_t norm_backward_workspace_bytes(int N, int C) {
  return size_t(bwd_blocks(N)) * 2 * size_t(std::max(C, 0)) * sizeof(float);
}

template <class T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* inp, const T* w, const T* b, int N, int C,
                       cudaStream_t stream) {
  norm_forward<false>(out, mean, rstd, inp, w, b, N, C, stream);
}
template <class T>
void layernorm_backward(T* dinp, float* dw, float* db, const T* dout, const T* inp, const T* w,
                        const float* mean, const float* rstd, int N, int C, bool accumulate_dinp,
                        void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  norm_backward<false>(dinp, dw, db, dout, inp, w, mean, rstd, N, C, accumulate_dinp, workspace,
                       workspace_bytes, stream);
}
template <class T>
void rmsnorm_forward(T* out, float* rstd, const T* inp, const T* w, int N, int C, cudaStream_t stream) {
  norm_forward<true, T>(out, nullptr, rstd, inp, w, nullptr, N, C, stream);
}
template <class T>
void rmsnorm_backward(T* dinp, float* dw, const T* dout, const T* inp, const T* w, const float* rstd, int N,
                      int C, bool accumulate_dinp, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream) {
  norm_backward<true, T>(dinp, dw, nullptr, dout, inp, w, nullptr, rstd, N, C, accumulate_dinp, workspace,
                         workspace_bytes, stream);
}

#define SCMOE_NORM_INSTANTIATE(T)                                                                           \
  template void layernorm_forward<T>(T*, float*, float*, const T*, const T*, const T*, int, int,            \
                                     cudaStream_t);                                                         \
  template void layernorm_backward<T>(T*, float*, float*, const T*, const T*, const T*, const float*,       \
                                      const float*, int, int, bool, void*, size_t, cudaStream_t);           \
  template void rmsnorm_forward<T>(T*, float*, const T*, const T*, int, int, cudaStream_t);                 \
  template void rmsnorm_backward<T>(T*, float*, const T*, const T*, const T*, const float*, int, int, bool, \
                                    void*, size_t, cudaStream_t);
SCMOE_NORM_INSTANTIATE(float)
SCMOE_NORM_INSTANTIATE(bf16)

SCMOE_CUDA_END
