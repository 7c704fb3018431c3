// The TcpStore's wire format (comm/store.h): a request is an op byte followed by little-endian,
// length-prefixed fields; a reply starts with a status byte. Decoding reads through WireReader, so the
// parser that serves sockets is the one tests/fuzz/fuzz_store_wire.cpp feeds arbitrary bytes.
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace scmoe {

enum StoreOp : uint8_t { kStoreSet = 1, kStoreGet = 2, kStoreWait = 3, kStoreCheck = 4 };
enum StoreStatus : uint8_t { kStoreOk = 0, kStoreTimedOut = 1 };

// Bounds on what a message may announce, so a stray connection sending garbage cannot make the
// server allocate gigabytes or wait for ever.
constexpr uint32_t kStoreMaxFieldBytes = 256u << 20;
constexpr uint32_t kStoreMaxKeys = 1u << 20;
constexpr std::chrono::milliseconds kStoreMaxTimeout{int64_t{7} * 24 * 3600 * 1000};  // a week

// The connection broke or the peer spoke nonsense; callers add which store and which request.
struct WireError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Fills exactly n bytes or throws WireError.
class WireReader {
 public:
  virtual ~WireReader() = default;
  virtual void read(char* p, size_t n) = 0;
  uint8_t u8();
  uint32_t u32();
  uint64_t u64();
  std::string str();                    // u32 length, then the bytes (at most kStoreMaxFieldBytes)
  std::vector<std::string> strs();      // u32 count (at most kStoreMaxKeys), then that many str
  std::chrono::milliseconds timeout();  // u64 milliseconds, at most kStoreMaxTimeout

 private:
  uint64_t uint_le(int bytes);
};

// A socket (recv; its SO_RCVTIMEO expiring is a WireError "no reply in time").
class FdReader : public WireReader {
 public:
  explicit FdReader(int fd) : fd_(fd) {}
  void read(char* p, size_t n) override;

 private:
  int fd_;
};

// Bytes in memory (tests, the fuzzer).
class BufferReader : public WireReader {
 public:
  BufferReader(const void* data, size_t n) : p_(static_cast<const char*>(data)), left_(n) {}
  void read(char* p, size_t n) override;
  size_t left() const { return left_; }

 private:
  const char* p_;
  size_t left_;
};

// Builds one message in memory so that it leaves in a single send.
class Writer {
 public:
  Writer& u8(uint8_t v);
  Writer& u32(uint32_t v) { return uint_le(v, 4); }
  Writer& u64(uint64_t v) { return uint_le(v, 8); }
  Writer& str(const std::string& s);
  Writer& strs(const std::vector<std::string>& v);
  void send(int fd) const;  // MSG_NOSIGNAL: a closed peer is a WireError, not SIGPIPE
  const std::string& bytes() const { return buf_; }

 private:
  Writer& uint_le(uint64_t v, int bytes);
  std::string buf_;
};

// One decoded request: SET key value | GET key timeout | WAIT keys timeout | CHECK keys.
struct StoreRequest {
  StoreOp op = kStoreCheck;
  std::string key, value;
  std::vector<std::string> keys;
  std::chrono::milliseconds timeout{0};
};
StoreRequest read_store_request(WireReader& in);  // WireError on an unknown op or a bad field

}  // namespace scmoe
