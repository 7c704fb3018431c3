// Host allocations checked against what the machine can give (core/host_memory.h): a model too large
// is an error naming the allocation and the sizes, before Linux's overcommit lets it "succeed".
#include <cstdint>
#include <limits>
#include <string>

#include "core/check.h"
#include "core/host_memory.h"
#include "kernels/cpu/backend.h"
#include "tests/testing.h"

int main() {
  const int64_t free = scmoe::host_memory_available();
  CHECK(free > 0);  // Linux: /proc/meminfo is there
  // Well within: no error.
  scmoe::check_host_allocation(1 << 20, 4, "a small array");
  // Four times what is available: named, with both sizes.
  const size_t too_many = size_t(free / 4) * 4 + (size_t(4) << 30);
  CHECK_THROWS_WITH(scmoe::check_host_allocation(too_many, 4, "the activation arena"),
                    "out of host memory: the activation arena needs ");
  CHECK_THROWS_WITH(scmoe::check_host_allocation(too_many, 4, "x"), " available (MemAvailable + free swap");
  // An element count whose byte size overflows size_t.
  CHECK_THROWS_WITH(scmoe::check_host_allocation(std::numeric_limits<size_t>::max() / 2, 8, "the weights"),
                    "the weights would hold");
  // Through the CPU backend's arrays, as the model allocates.
  using Array = scmoe::Cpu<float>::Array<float>;
  CHECK_THROWS_WITH(Array(too_many, "gradients"), "out of host memory: gradients needs ");
  Array small(1000, "a small buffer");
  CHECK(small.get() != nullptr && small.size() == 1000);
  TEST_MAIN_END();
}
