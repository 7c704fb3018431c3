// 128-bit packed loads and stores (llm.c's Packed128): VEC elements of T moved with one instruction
// natively. Kernels are templated on VEC and launched with VEC = vec_width<T>() when the row length
// and the pointers allow it, else with VEC = 1, so every shape still works.
#pragma once
#include <cstdint>

#include "kernels/cuda/common.cuh"

// `#pragma unroll` for nvcc only (host compilers warn about it under -Wall).
#if defined(SCMOE_SIMT_EMU)
#define SCMOE_UNROLL
#else
#define SCMOE_UNROLL _Pragma("unroll")
#endif

SCMOE_CUDA_BEGIN

template <class T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// Elements of T per 128 bits.
template <class T>
constexpr int vec_width() {
  return int(16 / sizeof(T));
}

template <int VEC, class T>
__device__ __forceinline__ void load_f32(float (&out)[VEC], const T* p) {
  Pack<T, VEC> pk;
#if defined(SCMOE_SIMT_EMU)
  for (int k = 0; k < VEC; k++) pk.v[k] = p[k];
#else
  pk = *reinterpret_cast<const Pack<T, VEC>*>(p);
#endif
  SCMOE_UNROLL
  for (int k = 0; k < VEC; k++) out[k] = to_f32(pk.v[k]);
}

template <int VEC, class T>
__device__ __forceinline__ void store_f32(T* p, const float (&in)[VEC]) {
  Pack<T, VEC> pk;
  SCMOE_UNROLL
  for (int k = 0; k < VEC; k++) pk.v[k] = from_f32<T>(in[k]);
#if defined(SCMOE_SIMT_EMU)
  for (int k = 0; k < VEC; k++) p[k] = pk.v[k];
#else
  *reinterpret_cast<Pack<T, VEC>*>(p) = pk;
#endif
}

// Host side: may a kernel use 16-byte packs on this pointer?
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

SCMOE_CUDA_END
