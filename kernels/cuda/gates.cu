// ScMoE combine-coefficient kernels (see gates.h): one warp per token row; the per-row dot products of
// the backward are warp sums in a fixed order (deterministic).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gates.h"

SCMOE_CUDA_BEGIN

namespace {
constexpr int kWarps = 8;  // rows per block

// exp of a non-positive argument only, so it never overflows (as the CPU twin).
__device__ __forceinline__ float sigmoid(float z) {
  if (z >= 0.f) return 1.f / (1.f + expf(-z));
  const float e = expf(z);
  return e / (1.f + e);
}

#define FOR_EACH_WARP_ROW(n, rows)                                              \
  for (int64_t n = (int64_t)blockIdx.x * kWarps + threadIdx.x / 32; n < (rows); \
       n += (int64_t)gridDim.x * kWarps)

template <class T>
__global__ void __launch_bounds__(kWarps * 32)
    cg1_forward_kernel(T* out, float* coef, const T* z, const T* se, int N, int C) {
  const int lane = threadIdx.x % 32;
  FOR_EACH_WARP_ROW(n, N) {
    const float s = sigmoid(to_f32(z[n]));
    if (lane == 0) coef[n] = s;
    const T* x = se + n * C;
    T* o = out + n * C;
    for (int c = lane; c < C; c += 32) o[c] = from_f32<T>(s * to_f32(x[c]));
  }
}

template <class T>
__global__ void __launch_bounds__(kWarps * 32)
    cg1_backward_kernel(T* dse, T* dz, const T* dout, const float* coef, const T* se, int N, int C) {
  const int lane = threadIdx.x % 32;
  FOR_EACH_WARP_ROW(n, N) {
    const float s = coef[n];
    const T* d = dout + n * C;
    const T* x = se + n * C;
    T* dx = dse + n * C;
    float dot = 0.f;
    for (int c = lane; c < C; c += 32) {
      const float dv = to_f32(d[c]);
      dx[c] = from_f32<T>(s * dv);
      dot += dv * to_f32(x[c]);
    }
    dot = warp_sum(dot);
    if (lane == 0) dz[n] = from_f32<T>(s * (1.f - s) * dot);
  }
}

template <class T>
__global__ void __launch_bounds__(kWarps * 32)
    cg2_forward_kernel(T* out, float* alpha, const T* z, const T* se, const T* moe, int N, int C) {
  const int lane = threadIdx.x % 32;
  FOR_EACH_WARP_ROW(n, N) {
    // A two-way softmax is a sigmoid of the difference; each weight gets its own sigmoid because
    // 1 - a0 would cancel when a0 is near 1.
    const float dzl = to_f32(z[2 * n]) - to_f32(z[2 * n + 1]);
    const float w0 = sigmoid(dzl), w1 = sigmoid(-dzl);
    if (lane == 0) alpha[2 * n] = w0, alpha[2 * n + 1] = w1;
    const T* x0 = se + n * C;
    const T* x1 = moe + n * C;
    T* o = out + n * C;
    for (int c = lane; c < C; c += 32) o[c] = from_f32<T>(w0 * to_f32(x0[c]) + w1 * to_f32(x1[c]));
  }
}

template <class T>
__global__ void __launch_bounds__(kWarps * 32)
    cg2_backward_kernel(T* dse, T* dmoe, T* dz, const T* dout, const float* alpha, const T* se, const T* moe,
                        int N, int C) {
  const int lane = threadIdx.x % 32;
  FOR_EACH_WARP_ROW(n, N) {
    const float w0 = alpha[2 * n], w1 = alpha[2 * n + 1];
    const T* d = dout + n * C;
    const T* x0 = se + n * C;
    const T* x1 = moe + n * C;
    T* d0 = dse + n * C;
    T* d1 = dmoe + n * C;
    float da0 = 0.f, da1 = 0.f;
    for (int c = lane; c < C; c += 32) {
      const float dv = to_f32(d[c]);
      d0[c] = from_f32<T>(w0 * dv);
      d1[c] = from_f32<T>(w1 * dv);
      da0 += dv * to_f32(x0[c]);
      da1 += dv * to_f32(x1[c]);
    }
    da0 = warp_sum(da0);
    da1 = warp_sum(da1);
    // dz_i = a_i (da_i - sum_j a_j da_j), i.e. dz_0 = -dz_1 = a0 a1 (da0 - da1).
    const float g = w0 * w1 * (da0 - da1);
    if (lane == 0) dz[2 * n] = from_f32<T>(g), dz[2 * n + 1] = from_f32<T>(-g);
  }
}

unsigned row_blocks(int N) { return (unsigned)std::min<int64_t>(ceil_div(N, kWarps), 65535 * 16); }
}  // namespace

template <class T>
void cg1_forward(T* out, float* coef, const T* z, const T* se, int N, int C, cudaStream_t stream) {
  if (N <= 0) return;
  launch(cg1_forward_kernel<T>, row_blocks(N), kWarps * 32, 0, stream, out, coef, z, se, N, C);
}
template <class T>
void cg1_backward(T* dse, T* dz, const T* dout, const float* coef, const T* se, int N, int C,
                  cudaStream_t stream) {
  if (N <= 0) return;
  launch(cg1_backward_kernel<T>, row_blocks(N), kWarps * 32, 0, stream, dse, dz, dout, coef, se, N, C);
}
template <class T>
void cg2_forward(T* out, float* alpha, const T* z, const T* se, const T* moe, int N, int C,
                 cudaStream_t stream) {
  if (N <= 0) return;
  launch(cg2_forward_kernel<T>, row_blocks(N), kWarps * 32, 0, stream, out, alpha, z, se, moe, N, C);
}
template <class T>
void cg2_backward(T* dse, T* dmoe, T* dz, const T* dout, const float* alpha, const T* se, const T* moe, int N,
                  int C, cudaStream_t stream) {
  if (N <= 0) return;
  launch(cg2_backward_kernel<T>, row_blocks(N), kWarps * 32, 0, stream, dse, dmoe, dz, dout, alpha, se, moe,
         N, C);
}

#define SCMOE_GATES_INSTANTIATE(T)                                                                 \
  template void cg1_forward<T>(T*, float*, const T*, const T*, int, int, cudaStream_t);            \
  template void cg1_backward<T>(T*, T*, const T*, const float*, const T*, int, int, cudaStream_t); \
  template void cg2_forward<T>(T*, float*, const T*, const T*, const T*, int, int, cudaStream_t);  \
  template void cg2_backward<T>(T*, T*, T*, const T*, const float*, const T*, const T*, int, int,  \
                                cudaStream_t);
SCMOE_GATES_INSTANTIATE(float)
SCMOE_GATES_INSTANTIATE(bf16)
#undef SCMOE_GATES_INSTANTIATE

SCMOE_CUDA_END
