// Fused cross-entropy kernels (see crossentropy.h): one block per row. Pass 1 is an online softmax
// (each thread keeps a running max and a sum rescaled to it, so the row is read once for both), the
// per-thread (max, sum) pairs are merged across the block; pass 2 rereads the row and writes the
// gradient in place.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/crossentropy.h"
#include "kernels/cuda/vec.cuh"

SCMOE_CUDA_BEGIN

namespace {
constexpr int kMaxThreads = 512;
constexpr int kMeanThreads = 256;

// Merges two (max, sum-of-exp relative to max) pairs; an empty pair is (-inf, 0).
__device__ __forceinline__ void softmax_merge(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2);
  s = (m == -INFINITY ? 0.f : s * expf(m - mn)) + (m2 == -INFINITY ? 0.f : s2 * expf(m2 - mn));
  m = mn;
}

template <int VEC, class T>
__global__ void crossentropy_kernel(T* logits, float* losses, const int32_t* targets, int V, float grad_scale,
                                    bool want_grad) {
  __shared__ float red_m[32], red_s[32];
  const int row = blockIdx.x, tid = threadIdx.x, lane = tid % 32, warp = tid / 32, nwarps = blockDim.x / 32;
  T* x = logits + (int64_t)row * V;
  const int target = targets[row];
  const bool valid = target >= 0 && target < V;
  // Read the target's logit now: pass 2 may overwrite it once everyone is past the barrier below.
  const float xt = tid == 0 && valid ? to_f32(x[target]) : 0.f;

  float m = -INFINITY, s = 0.f;
  for (int c = tid * VEC; c < V; c += blockDim.x * VEC) {
    float v[VEC];
    load_f32(v, x + c);
    SCMOE_UNROLL
    for (int k = 0; k < VEC; k++) {
      if (v[k] > m) {
        s = s * expf(m - v[k]) + 1.f;  // m = -inf the first time: s is 0 and stays finite
        m = v[k];
      } else {
        s += expf(v[k] - m);
      }
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    softmax_merge(m, s, m2, s2);
  }
  if (lane == 0) red_m[warp] = m, red_s[warp] = s;
  __syncthreads();
  m = red_m[0], s = red_s[0];
  for (int i = 1; i < nwarps; i++) softmax_merge(m, s, red_m[i], red_s[i]);  // same order in every thread
  const float lse = m + logf(s);
  if (tid == 0) losses[row] = valid ? lse - xt : NAN;
  if (!want_grad) return;
  for (int c = tid * VEC; c < V; c += blockDim.x * VEC) {
    float v[VEC];
    load_f32(v, x + c);
    SCMOE_UNROLL
    for (int k = 0; k < VEC; k++) v[k] = (expf(v[k] - lse) - (c + k == target ? 1.f : 0.f)) * grad_scale;
    store_f32(x + c, v);
  }
}

__global__ void mean_loss_kernel(float* mean_loss, const float* losses, int N) {
  __shared__ float scratch[32];
  float s = 0.f;
  for (int i = threadIdx.x; i < N; i += blockDim.x) s += losses[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) *mean_loss = s / float(N);
}
}  // namespace

template <class T>
void crossentropy_forward_backward(T* logits_to_dlogits, float* losses, const int32_t* targets, int N, int V,
                                   float grad_scale, bool want_grad, cudaStream_t stream) {
  if (N == 0) return;
  SCMOE_CHECK(V > 0, "crossentropy: V must be positive, got " << V);
  constexpr int W = vec_width<T>();
  const bool vec = V % W == 0 && aligned16(logits_to_dlogits);
  const int packs = vec ? V / W : V;
  const int threads = std::min(kMaxThreads, int(ceil_div(packs, 32)) * 32);
  if (vec)
    launch(crossentropy_kernel<W, T>, N, threads, 0, stream, logits_to_dlogits, losses, targets, V,
           grad_scale, want_grad);
  else
    launch(crossentropy_kernel<1, T>, N, threads, 0, stream, logits_to_dlogits, losses, targets, V,
           grad_scale, want_grad);
}

void crossentropy_mean_loss(float* mean_loss, const float* losses, int N, cudaStream_t stream) {
  SCMOE_CHECK(N > 0, "crossentropy_mean_loss: N must be positive, got " << N);
  launch(mean_loss_kernel, 1, kMeanThreads, 0, stream, mean_loss, losses, N);
}

template void crossentropy_forward_backward<float>(float*, float*, const int32_t*, int, int, float, bool,
                                                   cudaStream_t);
template void crossentropy_forward_backward<bf16>(bf16*, float*, const int32_t*, int, int, float, bool,
                                                  cudaStream_t);

SCMOE_CUDA_END
