// GELU kernels (see gelu.h): one element per thread, grid-stride, the same tanh-through-exp formula as
// the CPU twin so that fp32 results agree to a few ulps.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gelu.h"

SCMOE_CUDA_BEGIN

namespace {
constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2/pi)
__device__ __forceinline__ float tanh_via_exp(float u) { return 1.f - 2.f / (expf(2.f * u) + 1.f); }

template <class T>
__global__ void gelu_forward_kernel(T* out, const T* inp, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float x = to_f32(inp[i]);
    out[i] = from_f32<T>(0.5f * x * (1.f + tanh_via_exp(kGeluScale * (x + 0.044715f * x * x * x))));
  }
}

template <class T>
__global__ void gelu_backward_kernel(T* dinp, const T* inp, const T* dout, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float x = to_f32(inp[i]);
    float th = tanh_via_exp(kGeluScale * (x + 0.044715f * x * x * x));
    float sech2 = 1.f - th * th;
    float g = 0.5f * (1.f + th) + 0.5f * x * sech2 * kGeluScale * (1.f + 3.f * 0.044715f * x * x);
    dinp[i] = from_f32<T>(g * to_f32(dout[i]));
  }
}
}  // namespace

template <class T>
void gelu_forward(T* out, const T* inp, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  launch(gelu_forward_kernel<T>, grid_stride_blocks(n, 256), 256, 0, stream, out, inp, n);
}
template <class T>
void gelu_backward(T* dinp, const T* inp, const T* dout, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  launch(gelu_backward_kernel<T>, grid_stride_blocks(n, 256), 256, 0, stream, dinp, inp, dout, n);
}

template void gelu_forward<float>(float*, const float*, int64_t, cudaStream_t);
template void gelu_forward<bf16>(bf16*, const bf16*, int64_t, cudaStream_t);
template void gelu_backward<float>(float*, const float*, const float*, int64_t, cudaStream_t);
template void gelu_backward<bf16>(bf16*, const bf16*, const bf16*, int64_t, cudaStream_t);

SCMOE_CUDA_END
