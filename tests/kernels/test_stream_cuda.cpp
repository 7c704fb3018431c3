// CUDA streams and events (label gpu): stream order, cross-stream waits, host functions. Skipped, with
// a message and ctest's skip code, where no CUDA device is usable or the build has no CUDA.
#include <atomic>
#include <cstdio>
#include <vector>

#include "core/device.h"
#include "core/stream.h"
#ifdef SCMOE_HAVE_CUDA
#include "kernels/cuda/stream.h"
#endif
#include "tests/testing.h"

int main() {
#ifndef SCMOE_HAVE_CUDA
  std::printf("SKIP: this build has no CUDA backend\n");
  return 77;
#else
  scmoe::CudaQuery q = scmoe::query_cuda();
  if (q.device_count == 0) {
    std::printf("SKIP: no CUDA device (%s)\n", q.reason.c_str());
    return 77;
  }
  auto a = scmoe::cuda::make_stream("a"), b = scmoe::cuda::make_stream("b", true);
  auto ev = scmoe::cuda::make_event();
  std::vector<int> order;
  a->enqueue([&] { order.push_back(1); });
  a->enqueue([&] { order.push_back(2); });
  a->record(*ev);
  b->wait(*ev);
  b->enqueue([&] { order.push_back(3); });
  b->synchronize();
  a->synchronize();
  CHECK((order == std::vector<int>{1, 2, 3}));
  CHECK(ev->query());
  TEST_MAIN_END();
#endif
}
