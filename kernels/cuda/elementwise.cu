// Elementwise, fused residual + norm, and bias-gradient kernels (see elementwise.h). Elementwise ops
// are one grid-stride kernel over 128-bit packs (plus a scalar tail) parameterised by a small functor;
// pointers that are not 16-byte aligned fall back to one element per step.
#include <initializer_list>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/norm_row.cuh"
#include "kernels/cuda/partials.cuh"
#include "kernels/cuda/vec.cuh"

SCMOE_CUDA_BEGIN

namespace {
constexpr int kMapThreads = 256;
constexpr int kNormThreads = 256;  // 8 rows (warps) per block
// Bias gradient: a block is 32 column packs x 8 row lanes and covers a chunk of rows.
constexpr int kBiasX = 32, kBiasY = 8;
constexpr int kBiasRowsPerChunk =
    64;                              // rows summed by one block (8 per thread) before its partial is written
constexpr int kBiasMaxChunks = 256;  // bounds the workspace and the second stage

// Functors: fp32 in, fp32 out; `a`/`b` are the first/second input (unused ones read as 0).
struct AddOp {
  static constexpr int kArgs = 2;
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct CopyOp {
  static constexpr int kArgs = 1;
  __device__ float operator()(float a, float) const { return a; }
};
struct FillOp {
  static constexpr int kArgs = 0;
  float v;
  __device__ float operator()(float, float) const { return v; }
};
struct ScaleOp {
  static constexpr int kArgs = 1;
  float s;
  __device__ float operator()(float a, float) const { return a * s; }
};

template <int VEC, class T, class Op>
__global__ void map_kernel(T* out, const T* a, const T* b, int64_t n, Op op) {
  const int64_t tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x,
                stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t packs = n / VEC;
  for (int64_t p = tid; p < packs; p += stride) {
    float av[VEC] = {}, bv[VEC] = {}, o[VEC];
    if (Op::kArgs >= 1) load_f32(av, a + p * VEC);
    if (Op::kArgs >= 2) load_f32(bv, b + p * VEC);
    SCMOE_UNROLL
    for (int k = 0; k < VEC; k++) o[k] = op(av[k], bv[k]);
    store_f32(out + p * VEC, o);
  }
  const int64_t i = packs * VEC + tid;  // the n % VEC tail, one element per thread
  if (i < n) {
    const float x = Op::kArgs >= 1 ? to_f32(a[i]) : 0.f, y = Op::kArgs >= 2 ? to_f32(b[i]) : 0.f;
    out[i] = from_f32<T>(op(x, y));
  }
}

bool all_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p && !aligned16(p)) return false;
  return true;
}

template <class T, class Op>
void map(T* out, const T* a, const T* b, int64_t n, Op op, cudaStream_t stream) {
  if (n <= 0) return;
  if (all_aligned({out, a, b})) {
    constexpr int V = vec_width<T>();
    const unsigned grid = grid_stride_blocks(std::max<int64_t>(n / V, 1), kMapThreads);
    launch(map_kernel<V, T, Op>, grid, kMapThreads, 0, stream, out, a, b, n, op);
  } else {
    const unsigned grid = grid_stride_blocks(n, kMapThreads);
    launch(map_kernel<1, T, Op>, grid, kMapThreads, 0, stream, out, a, b, n, op);
  }
}

// One warp per row: write the residual with the lane -> channel mapping norm_row_forward uses, so
// each lane then reads back only what it wrote itself (no barrier needed), rounded to T as stored.
template <bool RMS, int VEC, class T>
__global__ void fused_residual_norm_kernel(T* resid, T* out, float* mean, float* rstd, const T* a, const T* b,
                                           const T* w, const T* bias, int N, int C) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const int64_t off = (int64_t)row * C;
  for (int c = lane * VEC; c < C; c += 32 * VEC) {
    float av[VEC], bv[VEC];
    load_f32(av, a + off + c);
    load_f32(bv, b + off + c);
    SCMOE_UNROLL
    for (int k = 0; k < VEC; k++) av[k] += bv[k];
    store_f32(resid + off + c, av);
  }
  norm_row_forward<RMS, VEC>(out + off, RMS ? nullptr : mean + row, rstd + row, resid + off, w, bias, C,
                             lane);
}

template <bool RMS, class T>
void fused_residual_norm(T* resid, T* out, float* mean, float* rstd, const T* a, const T* b, const T* w,
                         const T* bias, int N, int C, cudaStream_t stream) {
  if (N == 0) return;
  SCMOE_CHECK(C > 0, "fused residual norm: C must be positive, got " << C);
  const unsigned grid = ceil_div(N, kNormThreads / 32);
  if (C % vec_width<T>() == 0 && all_aligned({resid, out, a, b, w, bias}))
    launch(fused_residual_norm_kernel<RMS, vec_width<T>(), T>, grid, kNormThreads, 0, stream, resid, out,
           mean, rstd, a, b, w, bias, N, C);
  else
    launch(fused_residual_norm_kernel<RMS, 1, T>, grid, kNormThreads, 0, stream, resid, out, mean, rstd, a, b,
           w, bias, N, C);
}

int bias_chunks(int N) { return std::max(1, std::min<int>(ceil_div(N, kBiasRowsPerChunk), kBiasMaxChunks)); }

// Block (32, 8) over column packs x row lanes; blockIdx.y is the row chunk. Thread (x, y) sums rows
// y, y+8, ... of its chunk for VEC adjacent channels (a 128-bit load per row); the 8 row lanes are
// combined in y order through shared memory and written as this chunk's partial row.
template <int VEC, class T>
__global__ void bias_partial_kernel(float* partial, const T* dout, int N, int OC) {
  __shared__ float sums[kBiasY][kBiasX * VEC];
  const int c = (blockIdx.x * kBiasX + threadIdx.x) * VEC;
  float acc[VEC] = {};
  if (c < OC)
    for (int row = blockIdx.y * kBiasY + threadIdx.y; row < N; row += gridDim.y * kBiasY) {
      float v[VEC];
      load_f32(v, dout + (int64_t)row * OC + c);
      SCMOE_UNROLL
      for (int k = 0; k < VEC; k++) acc[k] += v[k];
    }
  for (int k = 0; k < VEC; k++) sums[threadIdx.y][threadIdx.x * VEC + k] = acc[k];
  __syncthreads();
  if (threadIdx.y == 0 && c < OC)
    for (int k = 0; k < VEC; k++) {
      float t = 0.f;
      for (int y = 0; y < kBiasY; y++) t += sums[y][threadIdx.x * VEC + k];
      partial[(int64_t)blockIdx.y * OC + c + k] = t;
    }
}
}  // namespace

template <class T>
void add(T* out, const T* a, const T* b, int64_t n, cudaStream_t stream) {
  map(out, a, b, n, AddOp{}, stream);
}
template <class T>
void add_inplace(T* y, const T* x, int64_t n, cudaStream_t stream) {
  map(y, static_cast<const T*>(y), x, n, AddOp{}, stream);
}
template <class T>
void copy(T* y, const T* x, int64_t n, cudaStream_t stream) {
  map(y, x, static_cast<const T*>(nullptr), n, CopyOp{}, stream);
}
template <class T>
void fill(T* y, float v, int64_t n, cudaStream_t stream) {
  map(y, static_cast<const T*>(nullptr), static_cast<const T*>(nullptr), n, FillOp{v}, stream);
}
template <class T>
void scale(T* y, float s, int64_t n, cudaStream_t stream) {
  map(y, static_cast<const T*>(y), static_cast<const T*>(nullptr), n, ScaleOp{s}, stream);
}

template <class T>
void fused_residual_layernorm_forward(T* resid, T* out, float* mean, float* rstd, const T* a, const T* b,
                                      const T* w, const T* bias, int N, int C, cudaStream_t stream) {
  fused_residual_norm<false>(resid, out, mean, rstd, a, b, w, bias, N, C, stream);
}
template <class T>
void fused_residual_rmsnorm_forward(T* resid, T* out, float* rstd, const T* a, const T* b, const T* w, int N,
                                    int C, cudaStream_t stream) {
  fused_residual_norm<true, T>(resid, out, nullptr, rstd, a, b, w, nullptr, N, C, stream);
}

namespace {
template <class T>
__global__ void from_f32_kernel(T* dst, const float* src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = from_f32<T>(src[i]);
}
}  // namespace

template <class T>
void convert_from_f32(T* dst, const float* src, int64_t n, cudaStream_t stream) {
  if (n > 0) launch(from_f32_kernel<T>, grid_stride_blocks(n, 256), 256, 0, stream, dst, src, n);
}

size_t bias_backward_workspace_bytes(int N, int OC) {
  return size_t(bias_chunks(N)) * size_t(std::max(OC, 0)) * sizeof(float);
}

template <class T>
void bias_backward(float* dbias, const T* dout, int N, int OC, void* workspace, size_t workspace_bytes,
                   cudaStream_t stream) {
  if (N == 0 || OC == 0) return;
  const size_t need = bias_backward_workspace_bytes(N, OC);
  SCMOE_CHECK(workspace && workspace_bytes >= need, "bias_backward: workspace of "
                                                        << workspace_bytes << " bytes, needs " << need
                                                        << " (bias_backward_workspace_bytes)");
  const int G = bias_chunks(N);
  float* partial = static_cast<float*>(workspace);
  constexpr int V = vec_width<T>();
  if (OC % V == 0 && aligned16(dout))
    launch(bias_partial_kernel<V, T>, dim3(ceil_div(OC / V, kBiasX), G), dim3(kBiasX, kBiasY), 0, stream,
           partial, dout, N, OC);
  else
    launch(bias_partial_kernel<1, T>, dim3(ceil_div(OC, kBiasX), G), dim3(kBiasX, kBiasY), 0, stream, partial,
           dout, N, OC);
  add_partials(dbias, dbias, OC, partial, G, OC, stream);
}

#define SCMOE_ELEMENTWISE_INSTANTIATE(T)                                                                  \
  template void add<T>(T*, const T*, const T*, int64_t, cudaStream_t);                                    \
  template void add_inplace<T>(T*, const T*, int64_t, cudaStream_t);                                      \
  template void copy<T>(T*, const T*, int64_t, cudaStream_t);                                             \
  template void fill<T>(T*, float, int64_t, cudaStream_t);                                                \
  template void scale<T>(T*, float, int64_t, cudaStream_t);                                               \
  template void fused_residual_layernorm_forward<T>(T*, T*, float*, float*, const T*, const T*, const T*, \
                                                    const T*, int, int, cudaStream_t);                    \
  template void fused_residual_rmsnorm_forward<T>(T*, T*, float*, const T*, const T*, const T*, int, int, \
                                                  cudaStream_t);                                          \
  template void bias_backward<T>(float*, const T*, int, int, void*, size_t, cudaStream_t);                 \
  template void convert_from_f32<T>(T*, const float*, int64_t, cudaStream_t);
SCMOE_ELEMENTWISE_INSTANTIATE(float)
SCMOE_ELEMENTWISE_INSTANTIATE(bf16)

SCMOE_CUDA_END
