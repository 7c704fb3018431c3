// Device allocations and copies (kernels/cuda/device_memory.h): the out-of-memory message names what,
// how much, the device's free/total and the start-up estimate; a real impossible allocation reports
// it; bytes in use are accounted; copies round-trip; size checks refuse overruns.
#include "kernels/cuda/device_memory.h"

#include <cstdint>
#include <string>
#include <vector>

#include "tests/kernels/emu/kernel_test.h"

namespace cu = scmoe::cuda;

namespace {
bool contains(const std::string& s, const std::string& needle) {
  if (s.find(needle) != std::string::npos) return true;
  std::fprintf(stderr, "'%s' lacks '%s'\n", s.c_str(), needle.c_str());
  return false;
}
}  // namespace

int main() {
  kt::require_device();
  CHECK(cu::format_bytes(0) == "0 B");
  CHECK(cu::format_bytes(1023) == "1023 B");
  CHECK(cu::format_bytes(1536) == "1.50 KiB");
  CHECK(cu::format_bytes(size_t(3) << 30) == "3.00 GiB");
  CHECK(cu::format_bytes(size_t(5) << 40) == "5.00 TiB");

  {
    cu::DeviceMemInfo info;
    info.free = size_t(1) << 30, info.total = size_t(80) << 30;
    const std::string m = cu::oom_message("gradients", 1536, info, size_t(3) << 20, size_t(70) << 30,
                                          "params 20.00 GiB, arena 50.00 GiB");
    CHECK(contains(m, "allocating gradients"));
    CHECK(contains(m, "1.50 KiB (1536 bytes) requested"));
    CHECK(contains(m, "1.00 GiB free of 80.00 GiB"));
    CHECK(contains(m, "holds 3.00 MiB"));
    CHECK(contains(m, "estimate was 70.00 GiB (75161927680 bytes): params 20.00 GiB, arena 50.00 GiB"));
    const std::string none = cu::oom_message("arena", 10, info, 0, 0, "");
    CHECK(contains(none, "no start-up estimate was recorded"));
  }

  // A petabyte fails on any device (and on the emulated one, the host's memory): the thrown message
  // carries the name, the size, the device's figures and the recorded estimate.
  const size_t before = cu::device_bytes_in_use();
  cu::set_memory_estimate(size_t(123456789), "params 1 MiB, arena 116 MiB");
  CHECK_THROWS_WITH(
      cu::device_alloc(size_t(1) << 50, "the activation arena"),
      "out of device memory allocating the activation arena: 1024.00 TiB (1125899906842624 bytes)");
  CHECK_THROWS_WITH(cu::device_alloc(size_t(1) << 50, "x"),
                    "the start-up estimate was 117.74 MiB (123456789 bytes)");
  CHECK_THROWS_WITH(cu::device_alloc(size_t(1) << 50, "x"), " free of ");
  CHECK(cu::device_bytes_in_use() == before);
  const cu::DeviceMemInfo info = cu::device_mem_info();
  CHECK(info.total > 0 && info.free <= info.total);

  // Accounting, ownership and copies (odd sizes).
  {
    const size_t n = 1001;
    std::vector<float> h = kt::random_vec(n, 3), back(n, -1.f), zero(n, 1.f);
    cu::DeviceArray<float> a(n, "test a");
    CHECK(cu::device_bytes_in_use() == before + n * sizeof(float));
    a.upload(h.data(), n);
    cu::DeviceArray<float> b(n, "test b");
    cu::copy_device_to_device(b.get(), a.get(), n * sizeof(float), "a to b");
    b.download(back.data(), n);
    kt::expect_equal("device-to-device round trip", back, h);
    cu::fill_zero(a.get(), n * sizeof(float), nullptr, "zero a");
    cu::copy_to_host_async(zero.data(), a.get(), n * sizeof(float), nullptr, "a back");
    kt::sync();
    kt::expect_equal("fill_zero", zero, std::vector<float>(n, 0.f));
    cu::copy_to_device_async(a.get(), h.data() + 1, (n - 1) * sizeof(float), nullptr, "a shifted");
    kt::sync();
    a.download(back.data(), n - 1);
    kt::expect_equal("async upload", std::vector<float>(back.begin(), back.end() - 1),
                     std::vector<float>(h.begin() + 1, h.end()));
    CHECK_THROWS_WITH(a.upload(h.data(), n + 1), "holds 1001");
    cu::DeviceArray<float> moved = std::move(a);
    CHECK(a.get() == nullptr && moved.size() == n);
    CHECK(cu::device_bytes_in_use() == before + 2 * n * sizeof(float));
    moved = cu::DeviceArray<float>(7, "test c");  // frees the 1001 floats
    CHECK(cu::device_bytes_in_use() == before + (n + 7) * sizeof(float));
    int local = 0;
    CHECK_THROWS_WITH(cu::device_free(&local), "did not return");
  }
  CHECK(cu::device_bytes_in_use() == before);
  CHECK(cu::device_alloc(0, "nothing") == nullptr);
  TEST_MAIN_END();
}
