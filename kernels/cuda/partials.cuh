// Second stage of the deterministic column reductions (norm dw/db, bias gradients): stage one leaves
// `G` partial rows of `M` floats in a workspace; this adds their column sums, always in the same
// order, into the destination (dst0[j] for j < split, dst1[j - split] otherwise). No float atomics,
// so gradients are bit-identical run to run.
#pragma once
#include "kernels/cuda/common.cuh"

SCMOE_CUDA_BEGIN
namespace {

constexpr int kPartialsX = 32, kPartialsY = 8;

// Block (32, 8): threadIdx.x picks the column (coalesced), threadIdx.y a residue class of partial
// rows, so G rows are summed 8-way in parallel rather than by one thread; the 8 sums are then
// combined by one thread in y order.
__global__ void add_partials_kernel(float* dst0, float* dst1, int split, const float* partial, int G, int M) {
  __shared__ float sums[kPartialsY][kPartialsX];
  const int j = blockIdx.x * kPartialsX + threadIdx.x;
  float s = 0.f;
  if (j < M)
    for (int g = threadIdx.y; g < G; g += kPartialsY) s += partial[(int64_t)g * M + j];
  sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && j < M) {
    float t = 0.f;
    for (int y = 0; y < kPartialsY; y++) t += sums[y][threadIdx.x];
    if (j < split)
      dst0[j] += t;
    else
      dst1[j - split] += t;
  }
}

inline void add_partials(float* dst0, float* dst1, int split, const float* partial, int G, int M,
                         cudaStream_t stream) {
  if (M == 0) return;
  launch(add_partials_kernel, ceil_div(M, kPartialsX), dim3(kPartialsX, kPartialsY), 0, stream, dst0, dst1,
         split, partial, G, M);
}

}  // namespace
SCMOE_CUDA_END
