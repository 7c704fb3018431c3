#include "core/host_memory.h"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/check.h"

namespace scmoe {
namespace {

// A kB field of /proc/meminfo (or another file of that form), or -1.
int64_t meminfo_bytes(const std::string& field, const char* file = "/proc/meminfo") {
  std::ifstream in(file);
  std::string key;
  int64_t kb;
  std::string unit;
  while (in >> key) {
    if (key == field + ":" && in >> kb) return kb * 1024;
    std::getline(in, unit);
  }
  return -1;
}

// A number from a cgroup file ("max" or a missing file: -1).
int64_t cgroup_value(const char* path) {
  std::ifstream in(path);
  std::string s;
  if (!(in >> s) || s == "max") return -1;
  try {
    return std::stoll(s);
  } catch (const std::exception&) {
    return -1;
  }
}

std::string gib(double bytes) {
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(bytes < 1e9 ? 3 : 1);
  s << bytes / (1024.0 * 1024 * 1024) << " GiB";
  return s.str();
}

}  // namespace

int64_t host_memory_available() {
  const int64_t avail = meminfo_bytes("MemAvailable");
  if (avail < 0) return -1;
  int64_t free = avail + std::max<int64_t>(0, meminfo_bytes("SwapFree"));
  struct Limit {
    const char* max;
    const char* used;
  };
  for (const Limit& l : {Limit{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"},
                         Limit{"/sys/fs/cgroup/memory/memory.limit_in_bytes",
                               "/sys/fs/cgroup/memory/memory.usage_in_bytes"}}) {
    const int64_t max = cgroup_value(l.max), used = cgroup_value(l.used);
    // v1 reports "no limit" as a huge number; anything beyond physical memory is no limit either.
    if (max > 0 && used >= 0 && max < (int64_t{1} << 60))
      free = std::min(free, std::max<int64_t>(0, max - used));
  }
  return free;
}

void check_host_allocation(size_t count, size_t elem_bytes, const std::string& what) {
  SCMOE_CHECK(elem_bytes == 0 || count <= std::numeric_limits<size_t>::max() / elem_bytes,
              "out of host memory: " << what << " would hold " << count << " elements of " << elem_bytes
                                     << " bytes, more than an address space (check the model's sizes)");
  const double bytes = double(count) * double(elem_bytes);
  const int64_t free = host_memory_available();
  SCMOE_CHECK(
      free < 0 || bytes <= double(free),
      "out of host memory: " << what << " needs " << gib(bytes) << ", this machine has " << gib(double(free))
                             << " available (MemAvailable + free swap, within any cgroup limit; this "
                             << "process holds " << gib(double(meminfo_bytes("VmRSS", "/proc/self/status")))
                             << " already); make the model (model.d_model, "
                                "model.n_layer, model.seq_len, model.vocab_size, moe.num_experts) or "
                                "train.batch_size smaller, or use more ranks");
}

}  // namespace scmoe
