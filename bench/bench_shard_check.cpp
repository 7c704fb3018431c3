// The cost of validating every token of a shard when the loader opens it (issue 15): a 100 M-token
// uint16 shard (200 MB, written here) is checked against the vocabulary by check_shard_tokens, beside
// the baseline of only reading the same bytes in the same chunks (pread, no scan), page cache warm, best of
// 5 each. usage: bench_shard_check [TOKENS_MILLIONS=100] [DIR=/tmp]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "data/shard.h"

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <class F>
double best_of(int n, F f) {
  double best = 1e30;
  for (int i = 0; i < n; i++) {
    const double t0 = now_s();
    f();
    best = std::min(best, now_s() - t0);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = int64_t(argc > 1 ? std::atof(argv[1]) : 100) * 1000000;
  const std::string path = std::string(argc > 2 ? argv[2] : "/tmp") + "/bench_shard_check_000000.bin";
  {
    std::vector<uint32_t> tokens(static_cast<size_t>(n));
    uint64_t x = 88172645463325252ull;
    for (auto& t : tokens) x ^= x << 13, x ^= x >> 7, x ^= x << 17, t = uint32_t(x % 50257);  // GPT-2 ids
    scmoe::write_shard(path, tokens, 1);
  }
  const scmoe::ShardInfo info = scmoe::read_shard_info(path);
  const double mb = double(info.num_tokens) * info.token_bytes() / 1e6;
  std::vector<uint16_t> buf(size_t(1) << 22);  // the chunk check_shard_tokens reads (4 M tokens)
  const double read_s = best_of(5, [&] {       // the same preads without the scan
    const int fd = ::open(path.c_str(), O_RDONLY);
    const size_t bytes = buf.size() * 2;
    for (off_t at = 1024; ::pread(fd, buf.data(), bytes, at) > 0; at += off_t(bytes)) {
    }
    ::close(fd);
  });
  const double check_s = best_of(5, [&] { scmoe::check_shard_tokens(info, 50257, "data.train"); });
  std::printf("shard of %.0f M tokens (%.0f MB, uint16), page cache warm, best of 5:\n", n / 1e6, mb);
  std::printf("  read only (baseline)        %7.1f ms  %6.2f GB/s\n", read_s * 1e3, mb / 1e3 / read_s);
  std::printf("  check_shard_tokens          %7.1f ms  %6.2f GB/s  (%.2fx the read)\n", check_s * 1e3,
              mb / 1e3 / check_s, check_s / read_s);
  ::unlink(path.c_str());
  return 0;
}
