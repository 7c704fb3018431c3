#include "comm/store_wire.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace scmoe {

uint64_t WireReader::uint_le(int bytes) {
  unsigned char b[8];
  read(reinterpret_cast<char*>(b), static_cast<size_t>(bytes));
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(b[i]) << (8 * i);
  return v;
}
uint8_t WireReader::u8() { return static_cast<uint8_t>(uint_le(1)); }
uint32_t WireReader::u32() { return static_cast<uint32_t>(uint_le(4)); }
uint64_t WireReader::u64() { return uint_le(8); }

std::string WireReader::str() {
  const uint32_t n = u32();
  if (n > kStoreMaxFieldBytes) throw WireError("a field of " + std::to_string(n) + " bytes (limit exceeded)");
  // Grown as the bytes arrive: a peer announcing 256 MB and sending nothing costs no 256 MB.
  std::string s;
  constexpr size_t kChunk = 64 << 10;
  for (size_t got = 0; got < n;) {
    const size_t k = std::min<size_t>(kChunk, n - got);
    s.resize(got + k);
    read(&s[got], k);
    got += k;
  }
  return s;
}

std::vector<std::string> WireReader::strs() {
  const uint32_t n = u32();
  if (n > kStoreMaxKeys) throw WireError("a message with " + std::to_string(n) + " keys");
  std::vector<std::string> v;
  for (uint32_t i = 0; i < n; i++) v.push_back(str());  // grows only as fields really arrive
  return v;
}

std::chrono::milliseconds WireReader::timeout() {
  const uint64_t ms = u64();
  if (ms > uint64_t(kStoreMaxTimeout.count())) throw WireError("a timeout of " + std::to_string(ms) + " ms");
  return std::chrono::milliseconds(int64_t(ms));
}

void FdReader::read(char* p, size_t n) {
  while (n > 0) {
    const ssize_t k = ::recv(fd_, p, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k == 0) throw WireError("connection closed by the peer");
    if (k < 0)
      throw WireError(errno == EAGAIN || errno == EWOULDBLOCK ? "no reply in time" : std::strerror(errno));
    p += k;
    n -= static_cast<size_t>(k);
  }
}

void BufferReader::read(char* p, size_t n) {
  if (n > left_) throw WireError("message ends early");
  std::memcpy(p, p_, n);
  p_ += n, left_ -= n;
}

Writer& Writer::u8(uint8_t v) {
  buf_.push_back(static_cast<char>(v));
  return *this;
}
Writer& Writer::str(const std::string& s) {
  u32(static_cast<uint32_t>(s.size()));
  buf_.append(s);
  return *this;
}
Writer& Writer::strs(const std::vector<std::string>& v) {
  u32(static_cast<uint32_t>(v.size()));
  for (const auto& s : v) str(s);
  return *this;
}
Writer& Writer::uint_le(uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) buf_.push_back(static_cast<char>(v >> (8 * i)));
  return *this;
}

void Writer::send(int fd) const {
  const char* p = buf_.data();
  size_t n = buf_.size();
  while (n > 0) {
    const ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) throw WireError(std::strerror(errno));
    p += k;
    n -= static_cast<size_t>(k);
  }
}

StoreRequest read_store_request(WireReader& in) {
  StoreRequest r;
  const uint8_t op = in.u8();
  switch (op) {
    case kStoreSet:
      r.key = in.str();
      r.value = in.str();
      break;
    case kStoreGet:
      r.key = in.str();
      r.timeout = in.timeout();
      break;
    case kStoreWait:
      r.keys = in.strs();
      r.timeout = in.timeout();
      break;
    case kStoreCheck:
      r.keys = in.strs();
      break;
    default:
      throw WireError("unknown request " + std::to_string(op));
  }
  r.op = StoreOp(op);
  return r;
}

}  // namespace scmoe
