// Token shards: header validation, token reads with vocabulary checks, atomic writes, globbing.
#include "data/shard.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "core/check.h"

namespace scmoe {

// The format is little-endian on disk; we copy raw bytes, so the host must be too.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "token shards are read on little-endian hosts only");

namespace {

constexpr uint64_t kHeaderBytes = kShardHeaderInts * sizeof(int32_t);

// Owns a file descriptor so every error path closes it.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

uint64_t file_size_of(int fd, const std::string& path) {
  struct stat st {};
  SCMOE_CHECK_IO(::fstat(fd, &st) == 0, path, "cannot stat token shard");
  return static_cast<uint64_t>(st.st_size);
}

// pread until `n` bytes arrive (pread may return short counts).
void pread_all(int fd, void* dst, size_t n, uint64_t offset, const std::string& path) {
  auto* p = static_cast<char*>(dst);
  while (n > 0) {
    ssize_t got = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    SCMOE_CHECK_IO(got >= 0, path, "cannot read token shard");
    SCMOE_CHECK(got > 0, "token shard '" << path << "' ended early while reading at byte " << offset
                                         << " (was it truncated while in use?)");
    p += got;
    n -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
}

// write(2) until all `n` bytes are out (write may return short counts).
void write_all(int fd, const void* src, size_t n, const std::string& path) {
  const auto* p = static_cast<const char*>(src);
  while (n > 0) {
    ssize_t put = ::write(fd, p, n);
    if (put < 0 && errno == EINTR) continue;
    SCMOE_CHECK_IO(put > 0, path, "cannot write token shard");
    p += put;
    n -= static_cast<size_t>(put);
  }
}

}  // namespace

ShardInfo parse_shard_header(const void* bytes, size_t nbytes, uint64_t file_size, const std::string& path) {
  SCMOE_CHECK(nbytes >= kHeaderBytes, "token shard '" << path << "': header incomplete: " << nbytes
                                                      << " bytes, a shard starts with a " << kHeaderBytes
                                                      << "-byte header");
  int32_t h[3];
  std::memcpy(h, bytes, sizeof(h));
  SCMOE_CHECK(h[0] == kShardMagic, "token shard '" << path << "': not a token shard (wrong magic): found "
                                                   << h[0] << ", expected " << kShardMagic
                                                   << " (prepare data with `python3 data/prepare.py`)");
  SCMOE_CHECK(h[1] == 1 || h[1] == 2, "token shard '" << path << "': unsupported version " << h[1]
                                                      << " (1: uint16 tokens, 2: uint32 tokens)");
  SCMOE_CHECK(h[2] >= 0, "token shard '" << path << "': negative token count " << h[2] << " in header");
  ShardInfo s;
  s.path = path;
  s.version = h[1];
  s.num_tokens = h[2];
  const uint64_t payload = static_cast<uint64_t>(s.num_tokens) * s.token_bytes();
  const uint64_t expected = kHeaderBytes + payload;
  SCMOE_CHECK(file_size >= expected, "token shard '" << path << "' truncated: header says " << s.num_tokens
                                                     << " tokens (" << payload << " bytes) but file has "
                                                     << (file_size - std::min(file_size, kHeaderBytes))
                                                     << " bytes after the header");
  SCMOE_CHECK(file_size == expected, "token shard '" << path << "': " << (file_size - expected)
                                                     << " extra bytes after the " << s.num_tokens
                                                     << " tokens the header announces (file has " << file_size
                                                     << " bytes, expected " << expected << ")");
  return s;
}

ShardInfo read_shard_info(const std::string& path) {
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  SCMOE_CHECK_IO(f.fd >= 0, path, "cannot open token shard");
  const uint64_t size = file_size_of(f.fd, path);
  char header[kHeaderBytes];
  const size_t n = static_cast<size_t>(std::min(size, kHeaderBytes));
  pread_all(f.fd, header, n, 0, path);
  return parse_shard_header(header, n, size, path);
}

void read_shard_tokens(const ShardInfo& s, int64_t start, int64_t count, int vocab_size, int32_t* out,
                       std::vector<unsigned char>* raw_buf) {
  SCMOE_CHECK(start >= 0 && count >= 0 && start + count <= s.num_tokens,
              "token shard '" << s.path << "': tokens [" << start << ", " << start + count
                              << ") out of range, the shard has " << s.num_tokens);
  Fd f;
  f.fd = ::open(s.path.c_str(), O_RDONLY | O_CLOEXEC);
  SCMOE_CHECK_IO(f.fd >= 0, s.path, "cannot open token shard");
  const size_t tb = s.token_bytes();
  std::vector<unsigned char> local;
  std::vector<unsigned char>& raw = raw_buf ? *raw_buf : local;
  raw.resize(static_cast<size_t>(count) * tb);
  pread_all(f.fd, raw.data(), raw.size(), kHeaderBytes + static_cast<uint64_t>(start) * tb, s.path);
  for (int64_t i = 0; i < count; ++i) {
    uint32_t t = 0;
    if (tb == 2) {
      uint16_t v;
      std::memcpy(&v, &raw[static_cast<size_t>(i) * 2], 2);
      t = v;
    } else {
      std::memcpy(&t, &raw[static_cast<size_t>(i) * 4], 4);
    }
    SCMOE_CHECK(t < static_cast<uint32_t>(vocab_size),
                "token shard '" << s.path << "': token " << t << " at position " << start + i
                                << " >= model.vocab_size " << vocab_size
                                << " (the data was tokenized for a larger vocabulary; see its meta.json)");
    out[i] = static_cast<int32_t>(t);
  }
}

namespace {

// Reads the shard's tokens (stored as U: uint16 or uint32, little-endian like the host) in chunks into
// a buffer of U, so the max scan is a plain loop the compiler vectorises; the first offending token is
// looked for only in a chunk whose max is out of range.
template <class U>
void scan_tokens(int fd, const ShardInfo& s, int vocab_size, const std::string& key) {
  constexpr int64_t kChunk = int64_t(1) << 22;  // tokens per read (8-16 MiB)
  std::vector<U> buf;
  for (int64_t at = 0; at < s.num_tokens; at += kChunk) {
    const int64_t n = std::min(kChunk, s.num_tokens - at);
    buf.resize(static_cast<size_t>(n));
    pread_all(fd, buf.data(), buf.size() * sizeof(U), kHeaderBytes + static_cast<uint64_t>(at) * sizeof(U),
              s.path);
    U m = 0;
    for (U v : buf) m = v > m ? v : m;
    if (m < static_cast<uint32_t>(vocab_size)) continue;
    for (int64_t i = 0; i < n; i++)
      SCMOE_CHECK(buf[size_t(i)] < static_cast<uint32_t>(vocab_size),
                  key << ": token shard '" << s.path << "': token " << buf[size_t(i)] << " at position "
                      << at + i << " >= model.vocab_size " << vocab_size
                      << " (the data was tokenized for a larger vocabulary; see its meta.json)");
  }
}

}  // namespace

void check_shard_tokens(const ShardInfo& s, int vocab_size, const std::string& key) {
  Fd f;
  f.fd = ::open(s.path.c_str(), O_RDONLY | O_CLOEXEC);
  SCMOE_CHECK_IO(f.fd >= 0, s.path, "cannot open token shard");
  if (s.token_bytes() == 2)
    scan_tokens<uint16_t>(f.fd, s, vocab_size, key);
  else
    scan_tokens<uint32_t>(f.fd, s, vocab_size, key);
}

void write_shard(const std::string& path, const std::vector<uint32_t>& tokens, int version) {
  if (version == 0) {
    const bool fits16 = std::all_of(tokens.begin(), tokens.end(), [](uint32_t t) { return t < 65536u; });
    version = fits16 ? 1 : 2;
  }
  SCMOE_CHECK(version == 1 || version == 2,
              "write_shard '" << path << "': version must be 1 or 2, got " << version);
  SCMOE_CHECK(tokens.size() <= static_cast<size_t>(INT32_MAX),
              "write_shard '" << path << "': " << tokens.size() << " tokens exceed a shard's limit");
  std::vector<int32_t> header(kShardHeaderInts, 0);
  header[0] = kShardMagic;
  header[1] = version;
  header[2] = static_cast<int32_t>(tokens.size());
  std::vector<unsigned char> payload(tokens.size() * (version == 1 ? 2 : 4));
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (version == 1) {
      SCMOE_CHECK(tokens[i] < 65536u, "write_shard '" << path << "': token " << tokens[i] << " at position "
                                                      << i << " does not fit version 1 (uint16)");
      const uint16_t v = static_cast<uint16_t>(tokens[i]);
      std::memcpy(&payload[i * 2], &v, 2);
    } else {
      std::memcpy(&payload[i * 4], &tokens[i], 4);
    }
  }
  // Write to a temporary name first so a crash never leaves a half-written shard under the real name.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    Fd f;
    f.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    SCMOE_CHECK_IO(f.fd >= 0, tmp, "cannot create token shard");
    write_all(f.fd, header.data(), kHeaderBytes, tmp);
    write_all(f.fd, payload.data(), payload.size(), tmp);
    SCMOE_CHECK_IO(::fsync(f.fd) == 0, tmp, "cannot sync token shard");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    errno = err;
    SCMOE_CHECK_IO(false, path, "cannot rename temporary token shard into place");
  }
}

std::vector<std::string> glob_shards(const std::string& pattern, const std::string& key) {
  glob_t g{};
  const int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> files;
  if (rc == 0) files.assign(g.gl_pathv, g.gl_pathv + g.gl_pathc);
  ::globfree(&g);
  SCMOE_CHECK(rc != GLOB_NOSPACE && rc != GLOB_ABORTED,
              key << ": error while globbing '" << pattern << "' (out of memory or unreadable directory)");
  SCMOE_CHECK(!files.empty(), key << ": no token shards match '" << pattern
                                  << "'; run the data preparation first (`python3 data/prepare.py --input "
                                     "FILE`, see data/prepare.py --help) or set "
                                  << key << " to a glob of existing .bin shards");
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace scmoe
