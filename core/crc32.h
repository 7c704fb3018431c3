#pragma once
// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320: the value of zlib's crc32() and Python's
// zlib.crc32), for the per-tensor checksums of checkpoint files.
#include <cstddef>
#include <cstdint>

namespace scmoe {

// The CRC-32 of `n` bytes continuing from `crc` (0 to start).
uint32_t crc32(const void* data, size_t n, uint32_t crc = 0);

}  // namespace scmoe
