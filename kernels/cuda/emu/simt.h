// SIMT emulation: compiles CUDA kernel source as host C++ and runs it on the CPU (docs/design.md section 5).
// Each block's threads are fibers (ucontext) that run until a barrier (__syncthreads) or a warp
// collective (__shfl_*_sync, __ballot_sync, __syncwarp) and are then resumed in a freshly shuffled
// order, some of them a round late; blocks also run in a shuffled order. A kernel that forgets a barrier reads data another
// thread has not written yet in some schedule, and its result differs from the reference. Divergent
// barriers (threads of one block waiting at different barriers, or a warp collective naming lanes that
// exited) are reported as errors instead of hanging.
//
// Kernel sources include this through kernels/cuda/common.cuh when SCMOE_SIMT_EMU is defined; they
// must use only what is defined here (and cuda_bf16.h, which works in host code). The emulator's state
// is per host thread, so that kernels of different streams (async_runtime.h: a thread per stream) run
// at once: a block's shared memory (function-static storage, thread_local) is its own thread's.
#pragma once
#include <cuda_bf16.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SIMT_ASAN 1
#endif
#endif
#ifdef SIMT_ASAN
#include <sanitizer/common_interface_defs.h>
#endif
// ThreadSanitizer follows the fibers' switches when told (else it sees one thread's stack change).
#if defined(__SANITIZE_THREAD__)
#define SIMT_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SIMT_TSAN 1
#endif
#endif
#ifdef SIMT_TSAN
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
}
#endif

// dim3 and uint3 come from the CUDA headers (vector_types.h, through cuda_bf16.h).
struct CUstream_st;
using cudaStream_t = CUstream_st*;
constexpr int warpSize = 32;

namespace simt {

// Thrown (and reported by launch()) when the emulated kernel does something a GPU would not survive.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Wait { none, block, warp, done };

struct Fiber {
  ucontext_t ctx;
#ifdef SIMT_TSAN
  void* tsan = nullptr;
#endif
  uint3 idx{0, 0, 0};
  int linear = 0;
  Wait wait = Wait::none;
  unsigned warp_mask = 0;  // lanes named by the collective this fiber waits in
};

struct State {
  dim3 grid, block;
  uint3 block_idx{0, 0, 0};
  std::vector<Fiber> fibers;
  std::vector<std::unique_ptr<char[]>> stacks;
  size_t stack_bytes = 256 * 1024;
  ucontext_t scheduler;
  Fiber* cur = nullptr;
  const std::function<void()>* body = nullptr;
  std::vector<unsigned char> dyn_shared;
  // Warp exchange slots: a value per lane, read after every lane of the warp has written.
  std::vector<uint64_t> lane_val;
  std::mt19937_64 rng{0x5eed};
  std::string error;
#ifdef SIMT_TSAN
  void* tsan_scheduler = nullptr;
#endif
#ifdef SIMT_ASAN
  void* fake_stack = nullptr;
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
#endif
};

inline State& st() {
  static thread_local State s;
  return s;
}

// The seed of the schedule shuffles (tests run several).
inline void set_seed(uint64_t seed) { st().rng.seed(seed); }

inline void switch_to_scheduler() {
  State& s = st();
#ifdef SIMT_TSAN
  __tsan_switch_to_fiber(s.tsan_scheduler, 0);
#endif
#ifdef SIMT_ASAN
  __sanitizer_start_switch_fiber(&s.fake_stack, s.sched_stack_bottom, s.sched_stack_size);
#endif
  swapcontext(&s.cur->ctx, &s.scheduler);
#ifdef SIMT_ASAN
  __sanitizer_finish_switch_fiber(s.fake_stack, nullptr, nullptr);
#endif
}

inline void fiber_entry() {
  State& s = st();
#ifdef SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &s.sched_stack_bottom, &s.sched_stack_size);
#endif
  try {
    (*s.body)();
  } catch (const std::exception& e) {
    if (s.error.empty()) s.error = e.what();
  }
  s.cur->wait = Wait::done;
#ifdef SIMT_TSAN
  __tsan_switch_to_fiber(s.tsan_scheduler, 0);
#endif
#ifdef SIMT_ASAN
  __sanitizer_start_switch_fiber(nullptr, s.sched_stack_bottom, s.sched_stack_size);
#endif
  setcontext(&s.scheduler);
}

inline int nthreads() {
  const State& s = st();
  return int(s.block.x * s.block.y * s.block.z);
}

// Sets up thread i's fiber to start the kernel body. Out of line: getcontext returns twice, which would
// make the caller's loop variables suspect (-Wclobbered).
__attribute__((noinline)) inline void prepare_fiber(State& s, int i) {
  Fiber& f = s.fibers[i];
  f.linear = i;
  f.idx = {unsigned(i % s.block.x), unsigned((i / s.block.x) % s.block.y), unsigned(i / (s.block.x * s.block.y))};
  f.wait = Wait::none;
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = s.stacks[i].get();
  f.ctx.uc_stack.ss_size = s.stack_bytes;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, fiber_entry, 0);
#ifdef SIMT_TSAN
  if (!f.tsan) f.tsan = __tsan_create_fiber(0);
#endif
}

// Runs one block to completion with shuffled resumption order.
inline void run_block() {
  State& s = st();
  const int n = nthreads();
  for (int i = 0; i < n; i++) prepare_fiber(s, i);
#ifdef SIMT_TSAN
  s.tsan_scheduler = __tsan_get_current_fiber();
#endif
  std::vector<int> order(n), later;
  const int nwarps = (n + warpSize - 1) / warpSize;
  // Slow warps: after each block barrier one warp may be held back for several rounds (as a warp that
  // lost the scheduler's favour would be), so a fast warp can go through warp collectives and write
  // shared memory that the slow warp has yet to read — the race a reused, single-buffered scratch has
  // without its trailing barrier. Within a round, a quarter of the ready threads also sit out.
  std::vector<int> slow_until(nwarps, 0);
  for (int round = 0;; round++) {
    order.clear(), later.clear();
    for (int i = 0; i < n; i++)
      if (s.fibers[i].wait == Wait::none) (slow_until[i / warpSize] > round ? later : order).push_back(i);
    if (order.empty()) order.swap(later);  // only slow warps left: let them go
    std::shuffle(order.begin(), order.end(), s.rng);
    size_t deferred = later.size() + (order.size() > 1 ? order.size() / 4 : 0);
    order.resize(order.size() - (order.size() > 1 ? order.size() / 4 : 0));
    for (int i : order) {
      s.cur = &s.fibers[i];
#ifdef SIMT_TSAN
      __tsan_switch_to_fiber(s.fibers[i].tsan, 0);
#endif
#ifdef SIMT_ASAN
      void* fs = nullptr;
      __sanitizer_start_switch_fiber(&fs, s.stacks[i].get(), s.stack_bytes);
#endif
      swapcontext(&s.scheduler, &s.fibers[i].ctx);
#ifdef SIMT_ASAN
      __sanitizer_finish_switch_fiber(fs, nullptr, nullptr);
#endif
      s.cur = nullptr;
      if (!s.error.empty()) throw Error(s.error);
    }
    // Release whatever barrier is complete.
    int live = 0, at_block = 0, released = 0;
    for (int i = 0; i < n; i++) {
      if (s.fibers[i].wait != Wait::done) live++;
      if (s.fibers[i].wait == Wait::block) at_block++;
    }
    if (live == 0) return;
    if (at_block == live) {
      for (int i = 0; i < n; i++)
        if (s.fibers[i].wait == Wait::block) s.fibers[i].wait = Wait::none;
      if (nwarps > 1 && s.rng() % 2) slow_until[s.rng() % nwarps] = round + 1 + int(s.rng() % 400);
      continue;
    }
    for (int w = 0; w < nwarps; w++) {
      const int lo = w * warpSize, hi = std::min(n, lo + warpSize);
      unsigned waiting = 0, alive = 0, mask = 0;
      for (int i = lo; i < hi; i++) {
        const Fiber& f = s.fibers[i];
        if (f.wait != Wait::done) alive |= 1u << (i - lo);
        if (f.wait == Wait::warp) waiting |= 1u << (i - lo), mask |= f.warp_mask;
      }
      if (!waiting) continue;
      if (mask & ~alive) {
        char buf[200];
        std::snprintf(buf, sizeof buf,
                      "warp collective in warp %d of block (%u,%u,%u) names lanes 0x%08x that have exited or do "
                      "not exist",
                      w, s.block_idx.x, s.block_idx.y, s.block_idx.z, mask & ~alive);
        throw Error(buf);
      }
      if ((waiting & mask) == mask) {
        for (int i = lo; i < hi; i++)
          if (s.fibers[i].wait == Wait::warp) s.fibers[i].wait = Wait::none;
        released++;
      }
    }
    if (released == 0 && deferred == 0) {
      char buf[200];
      std::snprintf(buf, sizeof buf,
                    "deadlock in block (%u,%u,%u): %d live threads, %d at __syncthreads, the rest at warp "
                    "collectives that cannot complete (divergent barrier?)",
                    s.block_idx.x, s.block_idx.y, s.block_idx.z, live, at_block);
      throw Error(buf);
    }
  }
}

// Runs `body` (the kernel call with its arguments bound) for every thread of every block.
inline void launch(dim3 grid, dim3 block, size_t dyn_shared_bytes, const std::function<void()>& body) {
  State& s = st();
  const int n = int(block.x * block.y * block.z);
  if (n <= 0 || n > 1024) throw Error("launch with " + std::to_string(n) + " threads per block (1..1024 allowed)");
  if (dyn_shared_bytes > 227 * 1024) throw Error("launch asks for " + std::to_string(dyn_shared_bytes) + " bytes of shared memory");
  if (grid.y > 65535 || grid.z > 65535) throw Error("grid.y/z above 65535");
  s.grid = grid, s.block = block, s.body = &body;
  s.fibers.resize(std::max<size_t>(s.fibers.size(), n));
  while ((int)s.stacks.size() < n) s.stacks.emplace_back(new char[s.stack_bytes]);
  s.lane_val.assign(((n + warpSize - 1) / warpSize) * warpSize, 0);
  s.error.clear();
  std::vector<uint3> blocks;
  for (unsigned z = 0; z < grid.z; z++)
    for (unsigned y = 0; y < grid.y; y++)
      for (unsigned x = 0; x < grid.x; x++) blocks.push_back({x, y, z});
  std::shuffle(blocks.begin(), blocks.end(), s.rng);
  for (const uint3& b : blocks) {
    s.block_idx = b;
    // Fresh garbage in dynamic shared memory for every block: a kernel that reads before writing
    // sees NaNs, as it would see stale data on a GPU.
    s.dyn_shared.assign(dyn_shared_bytes, 0xff);
    run_block();
  }
}

inline Fiber& cur() {
  State& s = st();
  if (!s.cur) throw Error("SIMT intrinsic called outside a kernel");
  return *s.cur;
}

inline void syncthreads() {
  cur().wait = Wait::block;
  switch_to_scheduler();
}

inline int lane() { return cur().linear % warpSize; }

// Every lane in `mask` deposits a value; returns after all of them have.
inline void warp_arrive(unsigned mask) {
  Fiber& f = cur();
  f.warp_mask = mask;
  f.wait = Wait::warp;
  switch_to_scheduler();
}

template <class T>
T shuffle(unsigned mask, T v, int src_lane_in_warp) {
  static_assert(sizeof(T) <= 8, "shuffle of types wider than 8 bytes");
  State& s = st();
  const int me = cur().linear, base = me - me % warpSize;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  s.lane_val[me] = bits;
  warp_arrive(mask);
  T out;
  uint64_t got = s.lane_val[base + src_lane_in_warp];
  std::memcpy(&out, &got, sizeof(T));
  warp_arrive(mask);  // nobody overwrites its slot before every lane has read
  return out;
}

inline void* dynamic_shared() { return st().dyn_shared.data(); }

}  // namespace simt

// ---- The CUDA names kernel source uses ----------------------------------------------------------
// cuda_bf16.h brought CUDA's own host definitions of these qualifiers; ours replace them.
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
// One block runs at a time on a host thread, so function-static thread-local storage behaves as the
// block's shared memory.
#define __shared__ static thread_local
#define threadIdx (::simt::cur().idx)
#define blockIdx (::simt::st().block_idx)
#define blockDim (::simt::st().block)
#define gridDim (::simt::st().grid)

inline void __syncthreads() { ::simt::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::simt::warp_arrive(mask), ::simt::warp_arrive(mask); }

template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = warpSize) {
  const int l = ::simt::lane(), seg = l - l % width;
  return ::simt::shuffle(mask, v, seg + (src % width));
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
  const int l = ::simt::lane(), seg = l - l % width;
  int src = l ^ lane_mask;
  if (src >= seg + width) src = l;
  return ::simt::shuffle(mask, v, src);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  const int l = ::simt::lane(), seg = l - l % width;
  int src = l + int(delta);
  if (src >= seg + width) src = l;
  return ::simt::shuffle(mask, v, src);
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  const int l = ::simt::lane(), seg = l - l % width;
  int src = l - int(delta);
  if (src < seg) src = l;
  return ::simt::shuffle(mask, v, src);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  unsigned out = 0;
  for (int src = 0; src < warpSize; src++)
    if (mask & (1u << src)) out |= (::simt::shuffle(mask, pred ? 1 : 0, src) ? 1u : 0u) << src;
  return out;
}

// Atomics: fibers never interleave inside one call, so plain read-modify-write is atomic here.
template <class T>
T atomicAdd(T* p, T v) {
  T old = *p;
  *p = old + v;
  return old;
}
template <class T>
T atomicMax(T* p, T v) {
  T old = *p;
  *p = std::max(old, v);
  return old;
}
template <class T>
T atomicMin(T* p, T v) {
  T old = *p;
  *p = std::min(old, v);
  return old;
}
template <class T>
T atomicExch(T* p, T v) {
  T old = *p;
  *p = v;
  return old;
}

inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
template <class T>
T __ldg(const T* p) {
  return *p;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __float_as_uint(float x) {
  unsigned u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}
// The lanes of `mask` whose `value` has the same bits as this lane's (sm_70+ match.any).
template <class T>
unsigned __match_any_sync(unsigned mask, T value) {
  static_assert(sizeof(T) <= 8, "__match_any_sync of types wider than 8 bytes");
  ::simt::State& s = ::simt::st();
  const int me = ::simt::cur().linear, base = me - me % warpSize;
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  s.lane_val[me] = bits;
  ::simt::warp_arrive(mask);
  unsigned out = 0;
  for (int src = 0; src < warpSize; src++)
    if ((mask & (1u << src)) && s.lane_val[base + src] == bits) out |= 1u << src;
  ::simt::warp_arrive(mask);  // nobody overwrites its slot before every lane has compared
  return out;
}

// Kernel launch through a function pointer (kernels/cuda/common.cuh wraps it as cuda::launch, which
// is <<<...>>> under nvcc). Arguments convert to the kernel's parameter types as in a real launch.
namespace simt {
template <class... P, class... A>
void launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
  launch(grid, block, smem, [&] { kernel(P(args)...); });
}
}  // namespace simt
#define SCMOE_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::simt::dynamic_shared())
