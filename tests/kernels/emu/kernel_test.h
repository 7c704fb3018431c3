// Harness for the emulated suites (tests/kernels/emu/, and the whole-model ones in tests/model/emu/ and
// tests/infer/emu/): one source, built twice.
//  - emu_<name> (ctest label `emu`, runs in CI): SCMOE_SIMT_EMU, "device" buffers are host memory and
//    the kernels run under the SIMT emulation, once per shuffled schedule (for_each_schedule).
//  - gpu_<name> (label `gpu`, only when the CUDA backend is built): the same checks against the
//    native kernels on a real device; exits 77 (ctest: skipped) with a message when there is none.
// Each suite compares a kernel with its CPU reference (kernels/cpu) on random inputs of awkward sizes.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "core/rng.h"
#include "kernels/cuda/abi.h"
#include "tests/testing.h"

#if defined(SCMOE_SIMT_EMU)
#include "kernels/cuda/emu/simt.h"
#else
#include <cuda_runtime.h>
#endif

namespace kt {

using scmoe::cuda::bf16;

#if defined(SCMOE_SIMT_EMU)
constexpr bool kEmulated = true;
inline const char* mode() { return "SIMT emulation"; }
inline void require_device() {}
inline void sync() {}
#else
constexpr bool kEmulated = false;
inline const char* mode() { return "native GPU"; }
inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s failed: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}
// No device (or a driver too old for this runtime): skip, loudly.
inline void require_device() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    std::printf("SKIPPED: no usable CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    std::exit(77);
  }
}
inline void sync() { check_cuda(cudaDeviceSynchronize(), "kernel (cudaDeviceSynchronize)"); }
#endif

// A device buffer: host memory of exactly n elements under emulation (so ASan sees overruns), device
// memory natively.
template <class T>
class Buf {
 public:
  explicit Buf(size_t n) : n_(n) {
#if defined(SCMOE_SIMT_EMU)
    host_.reset(new T[n ? n : 1]);
    p_ = host_.get();
#else
    check_cuda(cudaMalloc(&p_, (n ? n : 1) * sizeof(T)), "cudaMalloc");
#endif
  }
  explicit Buf(const std::vector<T>& v) : Buf(v.size()) { upload(v); }
  Buf(const Buf&) = delete;
  ~Buf() {
#if !defined(SCMOE_SIMT_EMU)
    cudaFree(p_);
#endif
  }
  void upload(const std::vector<T>& v) {
#if defined(SCMOE_SIMT_EMU)
    std::copy(v.begin(), v.begin() + std::min(v.size(), n_), p_);
#else
    check_cuda(cudaMemcpy(p_, v.data(), std::min(v.size(), n_) * sizeof(T), cudaMemcpyHostToDevice), "upload");
#endif
  }
  std::vector<T> download() const {
    std::vector<T> v(n_);
#if defined(SCMOE_SIMT_EMU)
    std::copy(p_, p_ + n_, v.begin());
#else
    check_cuda(cudaMemcpy(v.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), "download");
#endif
    return v;
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  size_t n_;
  T* p_ = nullptr;
#if defined(SCMOE_SIMT_EMU)
  std::unique_ptr<T[]> host_;
#endif
};

// Runs `body` under `n` different shuffled schedules when emulated (once natively).
inline void for_each_schedule(int n, const std::function<void(int)>& body) {
#if defined(SCMOE_SIMT_EMU)
  for (int s = 0; s < n; s++) {
    simt::set_seed(0x9e3779b97f4a7c15ull * (s + 1));
    body(s);
  }
#else
  (void)n;
  body(0);
#endif
}

// Uniform random values in [lo, hi), reproducible per seed.
inline std::vector<float> random_vec(size_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  scmoe::Rng r(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = lo + (hi - lo) * float(r.uniform());
  return v;
}

inline float to_float(float x) { return x; }
inline float to_float(bf16 x) { return __bfloat162float(x); }
inline std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> o(v.size());
  for (size_t i = 0; i < v.size(); i++) o[i] = __float2bfloat16(v[i]);
  return o;
}
// v in storage type T (float: as is; bf16: rounded to nearest), and T's name for messages.
template <class T>
std::vector<T> store_as(const std::vector<float>& v) {
  if constexpr (std::is_same<T, float>::value) return v;
  else return to_bf16(v);
}
template <class T>
const char* type_name() {
  return std::is_same<T, float>::value ? "fp32" : "bf16";
}
template <class T>
std::vector<float> to_floats(const std::vector<T>& v) {
  std::vector<float> o(v.size());
  for (size_t i = 0; i < v.size(); i++) o[i] = to_float(v[i]);
  return o;
}

// Max over i of |got - want| / (atol + |want|) <= rtol-ish: prints the worst element and counts a
// failure through the testing.h counters when any element is off by more than atol + rtol*|want|.
template <class A, class B>
bool expect_close(const std::string& what, const std::vector<A>& got, const std::vector<B>& want, double rtol,
                  double atol) {
  ++testing_::checks();
  if (got.size() != want.size()) {
    ++testing_::failures();
    std::fprintf(stderr, "FAIL %s: size %zu vs %zu\n", what.c_str(), got.size(), want.size());
    return false;
  }
  double worst = 0, worst_abs = 0;
  size_t at = 0, bad = 0;
  for (size_t i = 0; i < got.size(); i++) {
    double g = to_float(got[i]), w = double(want[i]);
    double err = std::fabs(g - w), allowed = atol + rtol * std::fabs(w);
    if (!(err <= allowed)) bad++;
    double r = err / allowed;
    if (!(r <= worst)) worst = r, worst_abs = err, at = i;  // NaN-safe: a NaN becomes the worst
  }
  if (bad) {
    ++testing_::failures();
    std::fprintf(stderr, "FAIL %s [%s]: %zu of %zu elements off; worst at %zu: got %.9g want %.9g (|err| %.3g)\n",
                 what.c_str(), mode(), bad, got.size(), at, double(to_float(got[at])), double(want[at]),
                 worst_abs);
    return false;
  }
  return true;
}

template <class A, class B>
bool expect_equal(const std::string& what, const std::vector<A>& got, const std::vector<B>& want) {
  ++testing_::checks();
  if (got.size() != want.size()) {
    ++testing_::failures();
    std::fprintf(stderr, "FAIL %s: size %zu vs %zu\n", what.c_str(), got.size(), want.size());
    return false;
  }
  for (size_t i = 0; i < got.size(); i++)
    if (!(got[i] == want[i])) {
      ++testing_::failures();
      std::fprintf(stderr, "FAIL %s [%s]: element %zu differs (%g vs %g)\n", what.c_str(), mode(), i, double(got[i]),
                   double(want[i]));
      return false;
    }
  return true;
}

}  // namespace kt
