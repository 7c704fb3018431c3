// AdamW, gradient norm and clip factor on the device (see adamw.h). One block per chunk of the flat
// buffer; the norm reduces in double over a grid that depends only on the sizes, so it is bit-identical
// from run to run (no float atomics anywhere).
#include <cmath>
#include <cstring>

#include "core/rng.h"
#include "kernels/cuda/adamw.h"
#include "kernels/cuda/common.cuh"

SCMOE_CUDA_BEGIN

namespace {
constexpr int kAdamThreads = 256;
constexpr int kNormThreads = 256;
constexpr int kMaxAdamBlocks = 1 << 20;  // chunks beyond this many loop (grid-stride over chunks)

// Scalars of one step, rounded once on the host from the double values the CPU optimizer uses.
struct AdamWArgs {
  float lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, bc1, bc2;
  uint64_t sr_key;  // stochastic-rounding key of (seed, t)
  int stochastic;   // 0: round to nearest
  int vec;          // all pointers aligned for float4 (bf16: 8-byte) accesses
};

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// AdamW<T>::step's arithmetic, term for term, in fp32. The fused multiply-adds are spelled out so that
// nvcc and the host compiler (which both contract at will) round identically.
__device__ __forceinline__ float adamw_update(float p, float g, float& m, float& v, float wd, float mult,
                                              const AdamWArgs& a) {
  g *= mult;
  m = fmaf(a.beta1, m, a.one_minus_beta1 * g);
  v = fmaf(a.beta2, v, a.one_minus_beta2 * (g * g));
  const float update = (m / a.bc1) / (sqrtf(v / a.bc2) + a.eps);
  return fmaf(-a.lr, fmaf(wd, p, update), p);
}

// 16 random bits per (key, index): murmur3's 64-bit finaliser over the index mixed with the key.
__device__ __forceinline__ unsigned sr_threshold(uint64_t key, int64_t i) {
  uint64_t x = key ^ (uint64_t(i) * 0x9E3779B97F4A7C15ull);
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return unsigned(x) & 0xffffu;
}

// The bf16 bits of x: round to nearest even, or stochastically: the magnitude goes up one bf16 ulp with
// probability (dropped bits) / 2^16, so the rounding is unbiased in expectation (as llm.c does).
__device__ __forceinline__ unsigned short bf16_bits(float x, const AdamWArgs& a, int64_t i) {
  const unsigned b = __float_as_uint(x);
  if (!a.stochastic || (b & 0x7f800000u) == 0x7f800000u) {  // inf/NaN keep their nearest conversion
    __nv_bfloat16_raw r = __float2bfloat16(x);
    return r.x;
  }
  const unsigned up = (b & 0xffffu) > sr_threshold(a.sr_key, i) ? 0x10000u : 0u;
  return (unsigned short)((b + up) >> 16);
}

__device__ __forceinline__ void store_bf16_bits(bf16* dst, unsigned short bits) {
  __nv_bfloat16_raw r;
  r.x = bits;
  *dst = bf16(r);
}

__device__ __forceinline__ void adamw_one(float* params, float* m, float* v, const float* grads, bf16* pbf,
                                          int64_t i, float wd, float mult, const AdamWArgs& a) {
  float mi = m[i], vi = v[i];
  const float p = adamw_update(params[i], grads[i], mi, vi, wd, mult, a);
  params[i] = p;
  m[i] = mi;
  v[i] = vi;
  if (pbf) store_bf16_bits(pbf + i, bf16_bits(p, a, i));
}

// Four consecutive elements with 16-byte loads and stores (i is a multiple of 4).
__device__ __forceinline__ void adamw_four(float* params, float* m, float* v, const float* grads, bf16* pbf,
                                           int64_t i, float wd, float mult, const AdamWArgs& a) {
  float4 p = *reinterpret_cast<const float4*>(params + i);
  const float4 g = *reinterpret_cast<const float4*>(grads + i);
  float4 mm = *reinterpret_cast<const float4*>(m + i);
  float4 vv = *reinterpret_cast<const float4*>(v + i);
  p.x = adamw_update(p.x, g.x, mm.x, vv.x, wd, mult, a);
  p.y = adamw_update(p.y, g.y, mm.y, vv.y, wd, mult, a);
  p.z = adamw_update(p.z, g.z, mm.z, vv.z, wd, mult, a);
  p.w = adamw_update(p.w, g.w, mm.w, vv.w, wd, mult, a);
  *reinterpret_cast<float4*>(params + i) = p;
  *reinterpret_cast<float4*>(m + i) = mm;
  *reinterpret_cast<float4*>(v + i) = vv;
  if (pbf) {
    uint2 packed;
    packed.x = unsigned(bf16_bits(p.x, a, i)) | unsigned(bf16_bits(p.y, a, i + 1)) << 16;
    packed.y = unsigned(bf16_bits(p.z, a, i + 2)) | unsigned(bf16_bits(p.w, a, i + 3)) << 16;
#if defined(SCMOE_SIMT_EMU)
    std::memcpy(static_cast<void*>(pbf + i), &packed, sizeof packed);  // host C++: no punning through uint2
#else
    *reinterpret_cast<uint2*>(pbf + i) = packed;
#endif
  }
}

__global__ void __launch_bounds__(kAdamThreads)
    adamw_kernel(float* params, float* m, float* v, const float* grads, bf16* pbf, const ParamChunk* chunks,
                 int num_chunks, const float* grad_mult, AdamWArgs a) {
  const float mult = grad_mult ? *grad_mult : 1.f;
  for (int c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const ParamChunk ch = chunks[c];
    const float wd = ch.decay ? a.weight_decay : 0.f;
    const int64_t begin = ch.offset, end = begin + ch.length;
    // [a0, a1): whole aligned float4s; the (at most 3 + 3) elements around it go one at a time.
    int64_t a0 = end, a1 = end;
    if (a.vec) {
      a0 = min64(end, (begin + 3) & ~int64_t(3));
      a1 = max64(a0, end & ~int64_t(3));
    }
    for (int64_t i = begin + threadIdx.x; i < a0; i += blockDim.x)
      adamw_one(params, m, v, grads, pbf, i, wd, mult, a);
    for (int64_t i = a1 + threadIdx.x; i < end; i += blockDim.x)
      adamw_one(params, m, v, grads, pbf, i, wd, mult, a);
    for (int64_t i = a0 + 4 * int64_t(threadIdx.x); i < a1; i += 4 * int64_t(blockDim.x))
      adamw_four(params, m, v, grads, pbf, i, wd, mult, a);
  }
}

// Per-block partial sums of squares, per group. Without a table, chunk c is [c*kParamChunk, ...) of
// the flat buffer, group 0. Squares accumulate in double (as optim's global_norm does).
template <bool kTable>
__global__ void __launch_bounds__(kNormThreads)
    norm_partials_kernel(double* partials, const float* g, int64_t n, const ParamChunk* chunks,
                         int num_chunks) {
  __shared__ double scratch[32];
  double acc0 = 0.0, acc1 = 0.0;
  for (int c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    int64_t begin;
    int len, group;
    if (kTable) {
      const ParamChunk ch = chunks[c];
      begin = ch.offset, len = ch.length, group = ch.group;
    } else {
      begin = int64_t(c) * kParamChunk;
      len = int(min64(n - begin, kParamChunk));
      group = 0;
    }
    const float* p = g + begin;
    double s = 0.0;
    for (int i = threadIdx.x; i < len; i += blockDim.x) {
      const double x = p[i];
      s += x * x;
    }
    if (group == 0)
      acc0 += s;
    else
      acc1 += s;
  }
  acc0 = block_sum<double>(acc0, scratch);
  if (kTable) acc1 = block_sum<double>(acc1, scratch);  // the flat buffer has one group
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = acc0;
    if (kTable) partials[kNormMaxBlocks + blockIdx.x] = acc1;
  }
}

// One block sums the partials in a fixed order (per-thread strided sums, then the block tree).
__global__ void __launch_bounds__(kNormThreads)
    norm_finish_kernel(double* out_sq, const double* partials, int nblocks, int ngroups) {
  __shared__ double scratch[32];
  for (int k = 0; k < ngroups; k++) {
    double s = 0.0;
    for (int i = threadIdx.x; i < nblocks; i += blockDim.x) s += partials[k * kNormMaxBlocks + i];
    s = block_sum<double>(s, scratch);
    if (threadIdx.x == 0) out_sq[k] = s;
  }
}

// One thread: a handful of scalars, launched so the clip factor never visits the host.
__global__ void clip_mult_kernel(float* out_mult, float* out_norm, const double* sq, int n_sq,
                                 double grad_clip) {
  double s = 0.0;
  for (int i = 0; i < n_sq; i++) s += sq[i];
  const double norm = sqrt(s);
  // train/trainer.cpp: clip only when enabled and exceeded.
  const double mult = grad_clip > 0 && norm > grad_clip ? grad_clip / norm : 1.0;
  if (out_norm) *out_norm = float(norm);
  if (out_mult) *out_mult = float(mult);
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }
}  // namespace

std::vector<ParamChunk> param_chunks(const std::vector<ParamRange>& ranges, int max_chunk) {
  SCMOE_CHECK(max_chunk > 0, "param_chunks: max_chunk must be positive, got " << max_chunk);
  std::vector<ParamRange> sorted = ranges;
  std::sort(sorted.begin(), sorted.end(),
            [](const ParamRange& a, const ParamRange& b) { return a.offset < b.offset; });
  for (size_t k = 1; k < sorted.size(); k++)
    SCMOE_CHECK(
        sorted[k - 1].offset + sorted[k - 1].numel <= sorted[k].offset,
        "param_chunks: ranges at " << sorted[k - 1].offset << " and " << sorted[k].offset << " overlap");
  std::vector<ParamChunk> out;
  const size_t step = size_t(max_chunk);
  for (const ParamRange& r : ranges) {
    for (size_t i = r.offset, end = r.offset + r.numel; i < end;) {
      const size_t next = std::min(end, (i / step + 1) * step);
      out.push_back({int64_t(i), int32_t(next - i), int16_t(r.decay ? 1 : 0), int16_t(r.expert ? 1 : 0)});
      i = next;
    }
  }
  SCMOE_CHECK(out.size() <= size_t(INT32_MAX),
              "param_chunks: " << out.size() << " chunks (at most 2^31 - 1)");
  return out;
}

std::vector<ParamChunk> param_chunks(const ParamTable& table, int max_chunk) {
  std::vector<ParamRange> ranges;
  for (const ParamSpec& s : table.specs()) ranges.push_back({s.offset, s.numel, s.decay, s.expert});
  return param_chunks(ranges, max_chunk);
}

void adamw_step(float* params, float* m, float* v, const float* grads, bf16* params_bf16,
                const ParamChunk* chunks, int num_chunks, const OptimConfig& cfg, double lr, int64_t t,
                const float* grad_mult, Bf16Rounding rounding, uint64_t seed, cudaStream_t stream) {
  SCMOE_CHECK(t >= 1, "adamw_step: t counts steps from 1, got " << t);
  if (num_chunks <= 0) return;
  AdamWArgs a;
  a.lr = float(lr);
  a.beta1 = float(cfg.beta1), a.one_minus_beta1 = float(1.0 - cfg.beta1);
  a.beta2 = float(cfg.beta2), a.one_minus_beta2 = float(1.0 - cfg.beta2);
  a.eps = float(cfg.eps);
  a.weight_decay = float(cfg.weight_decay);
  a.bc1 = float(1.0 - std::pow(cfg.beta1, double(t)));
  a.bc2 = float(1.0 - std::pow(cfg.beta2, double(t)));
  uint64_t s = seed;
  a.sr_key = scmoe::splitmix64(s) ^ (uint64_t(t) * 0xD1B54A32D192ED03ull);
  a.stochastic = rounding == Bf16Rounding::stochastic;
  a.vec = aligned(params, 16) && aligned(m, 16) && aligned(v, 16) && aligned(grads, 16) &&
          (!params_bf16 || aligned(params_bf16, 8));
  const unsigned grid = unsigned(std::min(num_chunks, kMaxAdamBlocks));
  launch(adamw_kernel, grid, kAdamThreads, 0, stream, params, m, v, grads, params_bf16, chunks, num_chunks,
         grad_mult, a);
}

void grad_norm_squared(double* out_sq, double* scratch, const float* g, int64_t n, cudaStream_t stream) {
  SCMOE_CHECK(n >= 0, "grad_norm_squared: negative length " << n);
  const int64_t nchunks64 = (n + kParamChunk - 1) / kParamChunk;
  SCMOE_CHECK(nchunks64 <= INT32_MAX, "grad_norm_squared: buffer of " << n << " elements is too long");
  const int nchunks = int(nchunks64);
  const int grid = std::max(1, std::min(nchunks, kNormMaxBlocks));
  launch(norm_partials_kernel<false>, grid, kNormThreads, 0, stream, scratch, g, n,
         (const ParamChunk*)nullptr, nchunks);
  launch(norm_finish_kernel, 1, kNormThreads, 0, stream, out_sq, (const double*)scratch, grid, 1);
}

void grad_norm_squared(double* out_sq, double* scratch, const float* g, const ParamChunk* chunks,
                       int num_chunks, cudaStream_t stream) {
  const int grid = std::max(1, std::min(num_chunks, kNormMaxBlocks));
  launch(norm_partials_kernel<true>, grid, kNormThreads, 0, stream, scratch, g, int64_t(0), chunks,
         std::max(0, num_chunks));
  launch(norm_finish_kernel, 1, kNormThreads, 0, stream, out_sq, (const double*)scratch, grid, kNormGroups);
}

void grad_clip_mult(float* out_mult, float* out_norm, const double* sq, int n_sq, double grad_clip,
                    cudaStream_t stream) {
  launch(clip_mult_kernel, 1, 1, 0, stream, out_mult, out_norm, sq, n_sq, grad_clip);
}

void global_norm(float* out_norm, double* scratch, const float* g, int64_t n, cudaStream_t stream) {
  double* sq = scratch + size_t(kNormMaxBlocks) * kNormGroups;  // the slot past the partials
  grad_norm_squared(sq, scratch, g, n, stream);
  grad_clip_mult(nullptr, out_norm, sq, 1, 0.0, stream);
}

SCMOE_CUDA_END
