// CUDA streams and events (label gpu): stream order, cross-stream waits, host functions. Skipped, with
// a message and ctest's skip code, where no CUDA device is usable or the build has no CUDA.
#include <atomic>
#include <cstdio>
#include <vector>

#include "core/device.h"
#include "core/stream.h"
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
  auto a = scmoe::make_cuda_stream("a"), b = scmoe::make_cuda_stream("b");
  auto ev = scmoe::make_cuda_event();
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
