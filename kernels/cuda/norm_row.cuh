// One warp normalises one row (LayerNorm or RMSNorm forward): shared by norm.cu and the fused
// residual + norm kernels in elementwise.cu, so both give bit-identical results.
#pragma once
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/vec.cuh"

SCMOE_CUDA_BEGIN

constexpr float kNormEpsF = 1e-5f;  // kernels/cpu/norm.h's kNormEps

// Lane `lane` owns the packs starting at channels (lane + 32k) * VEC (C a multiple of VEC), the same in
// every pass, so a caller that has just written the row with that mapping may call this at once.
// Statistics are fp32 and two-pass (mean first, then the centred sum of squares, as the CPU twin), so
// a large mean does not cancel; the re-reads of x hit L1. Lane 0 writes mean (LayerNorm) and rstd.
template <bool RMS, int VEC, class T>
__device__ __forceinline__ void norm_row_forward(T* out, float* mean, float* rstd, const T* x, const T* w,
                                                 const T* b, int C, int lane) {
  float m = 0.f;
  if constexpr (!RMS) {
    float s = 0.f;
    for (int c = lane * VEC; c < C; c += 32 * VEC) {
      float v[VEC];
      load_f32(v, x + c);
      SCMOE_UNROLL
      for (int k = 0; k < VEC; k++) s += v[k];
    }
    m = warp_sum(s) / float(C);
  }
  float ss = 0.f;
  for (int c = lane * VEC; c < C; c += 32 * VEC) {
    float v[VEC];
    load_f32(v, x + c);
    SCMOE_UNROLL
    for (int k = 0; k < VEC; k++) ss += (v[k] - m) * (v[k] - m);
  }
  const float r = rsqrtf(warp_sum(ss) / float(C) + kNormEpsF);
  for (int c = lane * VEC; c < C; c += 32 * VEC) {
    float v[VEC], wv[VEC], o[VEC];
    load_f32(v, x + c);
    load_f32(wv, w + c);
    if constexpr (RMS) {
      SCMOE_UNROLL
      for (int k = 0; k < VEC; k++) o[k] = v[k] * r * wv[k];
    } else {
      float bv[VEC];
      load_f32(bv, b + c);
      SCMOE_UNROLL
      for (int k = 0; k < VEC; k++) o[k] = (v[k] - m) * r * wv[k] + bv[k];
    }
    store_f32(out + c, o);
  }
  if (lane == 0) {
    if constexpr (!RMS) *mean = m;
    *rstd = r;
  }
}

SCMOE_CUDA_END
