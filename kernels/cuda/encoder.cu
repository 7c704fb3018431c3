// Embedding kernels (see encoder.h). Backward bucketing, all on the device: histogram of token ids
// (integer atomics), one-block exclusive scan into bucket offsets, scatter of positions into their
// buckets (integer atomics: arbitrary order within a bucket), then a rank pass that puts each bucket in
// ascending position order (a position's rank is the number of smaller positions in its bucket), so
// every later float sum runs in the same order on every run.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/encoder.h"
#include "kernels/cuda/vec.cuh"

SCMOE_CUDA_BEGIN

namespace {
constexpr int kThreads = 256;
constexpr int kScanThreads = 1024;

template <int VEC, class T>
__global__ void encoder_forward_kernel(T* out, const int32_t* idx, const T* wte, const T* wpe, int Tn, int C,
                                       int64_t packs) {
  for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < packs;
       p += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = p * VEC, bt = i / C;
    const int c = int(i - bt * C), t = int(bt % Tn);
    float a[VEC], b[VEC];
    load_f32(a, wte + (int64_t)idx[bt] * C + c);
    load_f32(b, wpe + (int64_t)t * C + c);
    SCMOE_UNROLL
    for (int k = 0; k < VEC; k++) a[k] += b[k];
    store_f32(out + i, a);
  }
}

__global__ void zero_ints_kernel(int* p, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = 0;
}

__global__ void histogram_kernel(int* counts, const int32_t* idx, int N) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < N) atomicAdd(&counts[idx[i]], 1);
}

// One block: thread t owns the contiguous token range [t*chunk, (t+1)*chunk); the exclusive scan of the
// per-thread totals comes from a warp scan (shuffles) plus the totals of the warps before. Writes
// offsets[0..V] (offsets[V] = N) and turns counts[] into each bucket's scatter cursor (its offset).
__global__ void bucket_scan_kernel(int* offsets, int* counts, int V) {
  __shared__ int warp_total[32];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int chunk = (V + blockDim.x - 1) / blockDim.x, lo = min(V, tid * chunk), hi = min(V, lo + chunk);
  int local = 0;
  for (int v = lo; v < hi; v++) local += counts[v];
  int incl = local;
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  if (lane == 31) warp_total[warp] = incl;
  __syncthreads();
  int running = incl - local;
  for (int w = 0; w < warp; w++) running += warp_total[w];
  for (int v = lo; v < hi; v++) {
    const int c = counts[v];
    offsets[v] = running;
    counts[v] = running;
    running += c;
  }
  if (tid == int(blockDim.x) - 1) offsets[V] = running;
}

__global__ void scatter_kernel(int* unordered, int* cursor, const int32_t* idx, int N) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < N) unordered[atomicAdd(&cursor[idx[i]], 1)] = i;
}

// O(bucket size) per position, so O(sum of squared bucket sizes) in all: small for text, where even the
// commonest token is a few percent of a batch.
__global__ void rank_kernel(int* sorted, const int* unordered, const int* offsets, const int32_t* idx,
                            int N) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N) return;
  const int tok = idx[i], lo = offsets[tok], hi = offsets[tok + 1];
  int rank = 0;
  for (int j = lo; j < hi; j++) rank += unordered[j] < i;
  sorted[lo + rank] = i;
}

// Block (s, y): if sorted slot s starts a bucket, its threads each sum one channel of the bucket's dout
// rows in position order (coalesced across the block) and add the sum to dwte once.
template <class T>
__global__ void dwte_kernel(float* dwte, const T* dout, const int32_t* idx, const int* sorted,
                            const int* offsets, int C) {
  const int s = blockIdx.x;
  const int tok = idx[sorted[s]];
  if (offsets[tok] != s) return;  // not the first slot of its bucket
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int hi = offsets[tok + 1];
  float acc = 0.f;
  for (int j = s; j < hi; j++) acc += to_f32(dout[(int64_t)sorted[j] * C + c]);
  dwte[(int64_t)tok * C + c] += acc;
}

// One thread per (t, c): sums over the batch in order.
template <class T>
__global__ void dwpe_kernel(float* dwpe, const T* dout, int B, int Tn, int C) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, TC = (int64_t)Tn * C;
  if (i >= TC) return;
  float acc = 0.f;
  for (int b = 0; b < B; b++) acc += to_f32(dout[b * TC + i]);
  dwpe[i] += acc;
}
}  // namespace

template <class T>
void encoder_forward(T* out, const int32_t* idx, const T* wte, const T* wpe, int B, int Tn, int C,
                     cudaStream_t stream) {
  const int64_t n = (int64_t)B * Tn * C;
  if (n == 0) return;
  constexpr int W = vec_width<T>();
  if (C % W == 0 && aligned16(out) && aligned16(wte) && aligned16(wpe)) {
    const int64_t packs = n / W;
    launch(encoder_forward_kernel<W, T>, grid_stride_blocks(packs, kThreads), kThreads, 0,
           stream, out, idx, wte, wpe, Tn, C, packs);
  } else {
    launch(encoder_forward_kernel<1, T>, grid_stride_blocks(n, kThreads), kThreads, 0,
           stream, out, idx, wte, wpe, Tn, C, n);
  }
}

size_t encoder_backward_workspace_bytes(int B, int Tn, int V) {
  return (2 * size_t(V) + 1 + 2 * size_t(B) * size_t(Tn)) * sizeof(int);
}

template <class T>
void encoder_backward(float* dwte, float* dwpe, const T* dout, const int32_t* idx, int B, int Tn, int C,
                      int V, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const int N = B * Tn;
  if (N == 0 || C == 0) return;
  SCMOE_CHECK(V > 0, "encoder_backward: V must be positive, got " << V);
  const size_t need = encoder_backward_workspace_bytes(B, Tn, V);
  SCMOE_CHECK(workspace && workspace_bytes >= need, "encoder_backward: workspace of "
                                                        << workspace_bytes << " bytes, needs " << need
                                                        << " (encoder_backward_workspace_bytes)");
  int* counts = static_cast<int*>(workspace);
  int* offsets = counts + V;
  int* unordered = offsets + V + 1;
  int* sorted = unordered + N;
  launch(zero_ints_kernel, ceil_div(V, kThreads), kThreads, 0, stream, counts, V);
  launch(histogram_kernel, ceil_div(N, kThreads), kThreads, 0, stream, counts, idx, N);
  launch(bucket_scan_kernel, 1, kScanThreads, 0, stream, offsets, counts, V);
  launch(scatter_kernel, ceil_div(N, kThreads), kThreads, 0, stream, unordered, counts, idx, N);
  launch(rank_kernel, ceil_div(N, kThreads), kThreads, 0, stream, sorted, unordered, offsets, idx, N);
  const int threads = std::min(kThreads, int(ceil_div(C, 32)) * 32);
  launch(dwte_kernel<T>, dim3(N, ceil_div(C, threads)), threads, 0, stream, dwte, dout, idx, sorted, offsets,
         C);
  launch(dwpe_kernel<T>, ceil_div((int64_t)Tn * C, kThreads), kThreads, 0, stream, dwpe, dout, B, Tn, C);
}

template void encoder_forward<float>(float*, const int32_t*, const float*, const float*, int, int, int,
                                     cudaStream_t);
template void encoder_forward<bf16>(bf16*, const int32_t*, const bf16*, const bf16*, int, int, int,
                                    cudaStream_t);
template void encoder_backward<float>(float*, float*, const float*, const int32_t*, int, int, int, int, void*,
                                      size_t, cudaStream_t);
template void encoder_backward<bf16>(float*, float*, const bf16*, const int32_t*, int, int, int, int, void*,
                                     size_t, cudaStream_t);

SCMOE_CUDA_END
