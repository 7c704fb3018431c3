// The SIMT emulation itself: barriers, warp shuffles and ballots behave as on a GPU, a kernel missing
// a barrier gives a wrong answer under some shuffled schedule, and divergent barriers are reported.
// (Emulation only: there is no GPU twin of this suite.)
#include <set>
#include <string>

#include "kernels/cuda/common.cuh"
#include "tests/kernels/emu/kernel_test.h"

using namespace scmoe::cuda;

// Reverses a block's values through shared memory; `with_barrier` false drops the barrier between the
// writes and the reads, so a thread may read a slot before its writer ran.
__global__ void reverse_kernel(int* out, const int* in, bool with_barrier) {
  __shared__ int s[256];
  const int t = threadIdx.x, n = blockDim.x;
  s[t] = in[blockIdx.x * n + t];
  if (with_barrier) __syncthreads();
  out[blockIdx.x * n + t] = s[n - 1 - t];
  __syncthreads();  // the next block reuses s
}

__global__ void block_sum_kernel(float* out, const float* in, int n) {
  __shared__ float scratch[32];
  float v = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += in[i];
  v = block_sum(v, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = v;
}

// block_sum without its trailing barrier: a warp that finishes a reduction can overwrite the shared
// scratch with its next partial sum while a slower warp still reads the previous round's partials.
__device__ float block_sum_missing_trailing_barrier(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : 0.f;
  return warp_sum(v);
}

// Several reductions in a row through the same scratch (like a norm over rows).
__global__ void repeated_sums_kernel(float* out, const float* in, int rounds, bool trailing_barrier) {
  __shared__ float scratch[32];
  for (int r = 0; r < rounds; r++) {
    float v = in[r * blockDim.x + threadIdx.x];
    v = trailing_barrier ? block_sum(v, scratch) : block_sum_missing_trailing_barrier(v, scratch);
    if (threadIdx.x == 0) out[r] = v;
  }
}

__global__ void shuffles_kernel(int* out) {
  const int l = threadIdx.x % 32;
  int* o = out + threadIdx.x * 5;
  o[0] = __shfl_xor_sync(0xffffffffu, l, 1);
  o[1] = __shfl_down_sync(0xffffffffu, l, 4);
  o[2] = __shfl_up_sync(0xffffffffu, l, 3);
  o[3] = __shfl_sync(0xffffffffu, l * 10, 7);
  o[4] = int(__ballot_sync(0xffffffffu, l % 3 == 0));
}

__global__ void divergent_barrier_kernel(int* out) {
  // Half the warp waits at the block barrier, the other half in a shuffle that needs the first half.
  if (threadIdx.x < 16) __syncthreads();
  else out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
}

__global__ void early_exit_shuffle_kernel(int* out) {
  if (threadIdx.x % 32 == 5) return;  // lane 5 leaves, then the warp shuffles with a full mask
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, int(threadIdx.x), 1);
}

int main() {
  const int n = 128, blocks = 3;
  std::vector<int> in(n * blocks), want(n * blocks);
  for (int i = 0; i < n * blocks; i++) in[i] = i * 7 + 1;
  for (int b = 0; b < blocks; b++)
    for (int t = 0; t < n; t++) want[b * n + t] = in[b * n + n - 1 - t];

  kt::for_each_schedule(4, [&](int) {
    kt::Buf<int> din(in), dout(n * blocks);
    launch(reverse_kernel, blocks, n, 0, nullptr, dout.get(), din.get(), true);
    kt::expect_equal("reverse with barrier", dout.download(), want);
  });
  // Without the barrier some schedule reads stale shared memory: the emulation must notice.
  int wrong = 0;
  kt::for_each_schedule(4, [&](int) {
    kt::Buf<int> din(in), dout(n * blocks);
    launch(reverse_kernel, blocks, n, 0, nullptr, dout.get(), din.get(), false);
    if (dout.download() != want) wrong++;
  });
  std::printf("missing barrier: wrong result under %d of 4 schedules\n", wrong);
  CHECK(wrong > 0);

  {
    const int rounds = 6, threads = 128;
    std::vector<float> x(rounds * threads);
    std::vector<float> want(rounds, 0.f);
    for (int r = 0; r < rounds; r++)
      for (int t = 0; t < threads; t++) x[r * threads + t] = float((r + 1) * 1000 + t), want[r] += x[r * threads + t];
    int wrong_missing = 0;
    kt::for_each_schedule(8, [&](int) {
      kt::Buf<float> dx(x), d_ok(rounds), d_bad(rounds);
      launch(repeated_sums_kernel, 1, threads, 0, nullptr, d_ok.get(), dx.get(), rounds, true);
      kt::expect_equal("repeated block sums", d_ok.download(), want);
      launch(repeated_sums_kernel, 1, threads, 0, nullptr, d_bad.get(), dx.get(), rounds, false);
      if (d_bad.download() != want) wrong_missing++;
    });
    std::printf("reused scratch without trailing barrier: wrong under %d of 8 schedules\n", wrong_missing);
    CHECK(wrong_missing > 0);
  }

  for (int len : {1, 33, 1000}) {
    std::vector<float> x = kt::random_vec(len, len);
    double s = 0;
    for (float v : x) s += v;
    kt::Buf<float> dx(x), dsum(2);
    launch(block_sum_kernel, 2, 96, 0, nullptr, dsum.get(), dx.get(), len);
    std::vector<float> got = dsum.download();
    CHECK_NEAR(got[0], s, 1e-4);
    CHECK_NEAR(got[1], s, 1e-4);
  }

  {
    kt::Buf<int> d(64 * 5);
    launch(shuffles_kernel, 1, 64, 0, nullptr, d.get());
    std::vector<int> o = d.download();
    unsigned ballot = 0;
    for (int l = 0; l < 32; l++)
      if (l % 3 == 0) ballot |= 1u << l;
    for (int t = 0; t < 64; t++) {
      int l = t % 32;
      CHECK(o[t * 5 + 0] == (l ^ 1));
      CHECK(o[t * 5 + 1] == (l + 4 < 32 ? l + 4 : l));
      CHECK(o[t * 5 + 2] == (l >= 3 ? l - 3 : l));
      CHECK(o[t * 5 + 3] == 70);
      CHECK(o[t * 5 + 4] == int(ballot));
    }
  }

  {
    kt::Buf<int> d(64);
    CHECK_THROWS_WITH(launch(divergent_barrier_kernel, 1, 32, 0, nullptr, d.get()), "deadlock");
    CHECK_THROWS_WITH(launch(early_exit_shuffle_kernel, 1, 32, 0, nullptr, d.get()), "exited");
    CHECK_THROWS_WITH(launch(divergent_barrier_kernel, 1, 2048, 0, nullptr, d.get()), "threads per block");
  }
  TEST_MAIN_END();
}
