// What every CUDA kernel file includes: the CUDA headers under nvcc, or the SIMT emulation
// (kernels/cuda/emu/simt.h, with its asynchronous runtime kernels/cuda/emu/async_runtime.h) when the
// same source is compiled as host C++ for the CPU tests (SCMOE_SIMT_EMU). Also: the launch wrapper, CUDA
// error checks, bf16 conversions and the warp/block reductions the kernels share.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>

#if defined(SCMOE_SIMT_EMU)
#include "kernels/cuda/emu/async_runtime.h"
#include "kernels/cuda/emu/simt.h"
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#define SCMOE_DYNAMIC_SHARED(type, name)                  \
  extern __shared__ __align__(16) unsigned char name##_raw_[]; \
  type* name = reinterpret_cast<type*>(name##_raw_)
#endif
#include "core/check.h"
#include "kernels/cuda/abi.h"

// Inside the inline namespace (abi.h): the emulated and native builds define the same names.
SCMOE_CUDA_BEGIN

#if defined(SCMOE_SIMT_EMU)
// On the stream's thread in its order (the null stream: now), as the asynchronous runtime runs it.
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, A... args) {
  if (!stream) return ::simt::launch_kernel(kernel, grid, block, smem, args...);
  ::simt::rt::enqueue(stream, [=] { ::simt::launch_kernel(kernel, grid, block, smem, args...); });
}
#define SCMOE_CUDA_CHECK(call) (void)(call)
#define SCMOE_KERNEL_CHECK() (void)0
#else
#ifndef SCMOE_CUDA_CHECK
#define SCMOE_CUDA_CHECK(call)                                                                   \
  do {                                                                                           \
    cudaError_t err_ = (call);                                                                   \
    SCMOE_CHECK(err_ == cudaSuccess, #call << " failed: " << cudaGetErrorString(err_));          \
  } while (0)
#endif
// Launch errors (bad configuration) surface at the launch; faults inside the kernel at the next sync.
#define SCMOE_KERNEL_CHECK() SCMOE_CUDA_CHECK(cudaGetLastError())
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, A... args) {
  kernel<<<grid, block, smem, stream>>>(P(args)...);
  SCMOE_KERNEL_CHECK();
}
#endif

inline unsigned ceil_div(int64_t a, int64_t b) { return unsigned((a + b - 1) / b); }

// Blocks for a grid-stride loop over n items: enough to fill a large GPU; the loop covers the rest.
inline unsigned grid_stride_blocks(int64_t n, int block) {
  return unsigned(std::min<int64_t>(ceil_div(n, block), 65535 * 8));
}

// Kernels whose dynamic shared memory exceeds the default 48 KiB must opt in (natively; the emulation
// only checks the 227 KiB hardware limit). The driver is asked once per kernel and larger size, not on
// every launch.
template <class... P>
void allow_smem(void (*kernel)(P...), size_t bytes) {
#if defined(SCMOE_SIMT_EMU)
  (void)kernel, (void)bytes;
#else
  if (bytes <= 48 * 1024) return;
  static std::mutex mu;
  static std::unordered_map<const void*, size_t> granted;
  std::lock_guard<std::mutex> lock(mu);
  size_t& g = granted[reinterpret_cast<const void*>(kernel)];
  if (bytes <= g) return;
  SCMOE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  g = bytes;
#endif
}

// Storage type <-> fp32 (all arithmetic is fp32; bf16 is storage only).
__host__ __device__ __forceinline__ float to_f32(float x) { return x; }
__host__ __device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
template <class T>
__host__ __device__ __forceinline__ T from_f32(float x);
template <>
__host__ __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__host__ __device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16(x); }

struct SumOp {
  template <class F>
  __device__ __forceinline__ F operator()(F a, F b) const { return a + b; }
};
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Butterfly reduction over the 32 lanes; every lane gets the result.
template <class F, class Op>
__device__ __forceinline__ F warp_reduce(F v, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Reduction over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` is 32 elements of shared memory; the trailing barrier lets callers reuse it at once.
template <class F, class Op>
__device__ __forceinline__ F block_reduce(F v, F* scratch, F identity, Op op) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  v = warp_reduce(v, op);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : identity;
  v = warp_reduce(v, op);
  __syncthreads();
  return v;
}

// F = float, or double where sums must not lose bits (the gradient norm).
template <class F>
__device__ __forceinline__ F warp_sum(F v) { return warp_reduce(v, SumOp{}); }
__device__ __forceinline__ float warp_max(float v) { return warp_reduce(v, MaxOp{}); }
template <class F>
__device__ __forceinline__ F block_sum(F v, F* scratch) { return block_reduce(v, scratch, F(0), SumOp{}); }
__device__ __forceinline__ float block_max(float v, float* scratch) {
  return block_reduce(v, scratch, -INFINITY, MaxOp{});
}

SCMOE_CUDA_END
