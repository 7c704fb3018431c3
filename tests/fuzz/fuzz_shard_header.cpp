// libFuzzer target for token-shard header validation: arbitrary bytes and file sizes must give a
// ShardInfo or a scmoe::Error, never a crash, overflow or out-of-bounds read.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "data/shard.h"

namespace {

constexpr uint64_t kHeaderBytes = scmoe::kShardHeaderInts * sizeof(int32_t);

void check_one(const uint8_t* data, size_t size, uint64_t file_size) {
  // A copy of exactly `size` bytes, so ASan sees any read past the end of what we were given.
  std::vector<uint8_t> bytes(data, data + size);
  try {
    const scmoe::ShardInfo s = scmoe::parse_shard_header(bytes.data(), bytes.size(), file_size, "fuzz.bin");
    // Accepted: the header's promises must hold.
    if (s.version != 1 && s.version != 2) std::abort();
    if (s.num_tokens < 0) std::abort();
    if (file_size != kHeaderBytes + static_cast<uint64_t>(s.num_tokens) * s.token_bytes()) std::abort();
  } catch (const scmoe::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // As if the input were the whole file...
  check_one(data, size, size);
  // ...and with a file size taken from the input's last 8 bytes (huge, tiny, off by a few).
  if (size >= 8) {
    uint64_t file_size;
    std::memcpy(&file_size, data + size - 8, sizeof file_size);
    check_one(data, size - 8, file_size);
  }
  return 0;
}
