// safetensors reader/writer: a small JSON header parser and writer, strict validation of the layout
// (the same rules the reference Rust implementation applies), and checked POSIX I/O.
#include "train/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>
#include <sstream>
#include <utility>

#include "core/check.h"
#include "core/crc32.h"

namespace scmoe {
namespace {

const char* const kMetadataKey = "__metadata__";
constexpr int kMaxJsonDepth = 16;  // the header nests 3 deep; a limit keeps hostile input off the stack

// Every error names the file first so a user can tell which of many shards is broken.
#define ST_FAIL(path, msg) SCMOE_FAIL("safetensors file '" << (path) << "': " << msg)
#define ST_CHECK(cond, path, msg)    \
  do {                               \
    if (!(cond)) ST_FAIL(path, msg); \
  } while (0)

// ---------------------------------------------------------------------------------------------
// UTF-8 and JSON strings

// Readers (serde_json in the reference implementation) reject invalid UTF-8, so neither side accepts it.
bool valid_utf8(const std::string& s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (len == 0 || i + len > n) return false;
    uint32_t cp = len == 1 ? c : c & (0xff >> (len + 1));
    for (int k = 1; k < len; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc >> 6) != 0x2) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    static const uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};  // reject overlong encodings
    if (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  return out + "\"";
}

// ---------------------------------------------------------------------------------------------
// A JSON subset parser: objects, arrays, strings, integers -- all a safetensors header contains.

struct Json {
  enum Kind { kObject, kArray, kString, kInt } kind = kObject;
  std::string str;
  int64_t num = 0;
  std::vector<std::string> keys;  // objects: keys[i] -> items[i], in file order
  std::vector<Json> items;        // objects and arrays
};

const char* kind_name(Json::Kind k) {
  switch (k) {
    case Json::kObject:
      return "an object";
    case Json::kArray:
      return "an array";
    case Json::kString:
      return "a string";
    case Json::kInt:
      return "an integer";
  }
  return "?";
}

class JsonParser {
 public:
  JsonParser(const std::string& text, const std::string& path) : s_(text), path_(path) {}

  Json parse_document() {
    skip_ws();
    Json v = parse_value(0);
    skip_ws();  // the writer pads the header with spaces
    if (pos_ != s_.size()) fail("unexpected trailing characters");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    ST_FAIL(path_, "bad header JSON at byte " << pos_ << ": " << what);
  }
  bool at_end() const { return pos_ >= s_.size(); }
  char peek() const { return at_end() ? '\0' : s_[pos_]; }
  void skip_ws() {
    while (!at_end() && (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r')) ++pos_;
  }
  void expect(char c) {
    if (at_end() || peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }

  Json parse_value(int depth) {
    if (depth > kMaxJsonDepth) fail("nesting too deep");
    char c = peek();
    if (c == '{') return parse_object(depth);
    if (c == '[') return parse_array(depth);
    Json v;
    if (c == '"') {
      v.kind = Json::kString;
      v.str = parse_string();
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      v.kind = Json::kInt;
      v.num = parse_int();
    } else {
      fail(at_end() ? "unexpected end of header"
                    : "unexpected character (only objects, arrays, strings and integers are allowed)");
    }
    return v;
  }

  Json parse_object(int depth) {
    Json v;
    v.kind = Json::kObject;
    std::set<std::string> seen;
    expect('{');
    skip_ws();
    if (peek() == '}') {
      ++pos_;
      return v;
    }
    for (;;) {
      skip_ws();
      if (peek() != '"') fail("expected a string key");
      std::string key = parse_string();
      if (!seen.insert(key).second) fail("duplicate key '" + key + "'");
      skip_ws();
      expect(':');
      skip_ws();
      v.keys.push_back(std::move(key));
      v.items.push_back(parse_value(depth + 1));
      skip_ws();
      if (peek() == '}') {
        ++pos_;
        return v;
      }
      expect(',');
    }
  }

  Json parse_array(int depth) {
    Json v;
    v.kind = Json::kArray;
    expect('[');
    skip_ws();
    if (peek() == ']') {
      ++pos_;
      return v;
    }
    for (;;) {
      skip_ws();
      v.items.push_back(parse_value(depth + 1));
      skip_ws();
      if (peek() == ']') {
        ++pos_;
        return v;
      }
      expect(',');
    }
  }

  int64_t parse_int() {
    bool neg = peek() == '-';
    if (neg) ++pos_;
    if (!(peek() >= '0' && peek() <= '9')) fail("expected a digit");
    if (peek() == '0' && pos_ + 1 < s_.size() && s_[pos_ + 1] >= '0' && s_[pos_ + 1] <= '9')
      fail("leading zeros are not allowed");
    uint64_t mag = 0;
    const uint64_t limit = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    while (peek() >= '0' && peek() <= '9') {
      uint64_t d = static_cast<uint64_t>(peek() - '0');
      if (mag > (limit - d) / 10) fail("integer out of range");
      mag = mag * 10 + d;
      ++pos_;
    }
    if (peek() == '.' || peek() == 'e' || peek() == 'E') fail("only integers are allowed");
    return neg ? -static_cast<int64_t>(mag) : static_cast<int64_t>(mag);
  }

  uint32_t parse_hex4() {
    if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = s_[pos_++];
      int d = (c >= '0' && c <= '9')   ? c - '0'
              : (c >= 'a' && c <= 'f') ? c - 'a' + 10
              : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                       : -1;
      if (d < 0) fail("bad hex digit in \\u escape");
      v = v * 16 + static_cast<uint32_t>(d);
    }
    return v;
  }

  uint32_t parse_unicode_escape() {
    uint32_t cp = parse_hex4();
    if (cp >= 0xdc00 && cp <= 0xdfff) fail("unpaired low surrogate");
    if (cp >= 0xd800 && cp <= 0xdbff) {  // UTF-16 pair: JSON's way of writing astral characters
      if (s_.compare(pos_, 2, "\\u") != 0) fail("unpaired high surrogate");
      pos_ += 2;
      uint32_t lo = parse_hex4();
      if (lo < 0xdc00 || lo > 0xdfff) fail("bad low surrogate");
      cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    return cp;
  }

  std::string parse_string() {
    expect('"');
    std::string out;
    for (;;) {
      if (at_end()) fail("unterminated string");
      char c = s_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("raw control character in string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (at_end()) fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u':
          append_utf8(out, parse_unicode_escape());
          break;
        default:
          fail(std::string("bad escape '\\") + e + "'");
      }
    }
  }

  const std::string& s_;
  const std::string& path_;
  size_t pos_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Layout arithmetic shared by reader and writer

// prod(shape) * dtype size, or false on a negative dimension or overflow.
bool tensor_nbytes(const std::vector<int64_t>& shape, size_t elem, uint64_t* out) {
  uint64_t n = elem;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  }
  *out = n;
  return true;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

// ---------------------------------------------------------------------------------------------
// Writing

// Owns a file descriptor so an exception mid-write does not leak it.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

void write_all(int fd, const char* data, size_t n, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::write(fd, data, n);
    if (w < 0 && errno == EINTR) continue;
    SCMOE_CHECK_IO(w > 0, path, "write to");  // w == 0 would loop forever; treat as failure
    data += w;
    n -= static_cast<size_t>(w);
  }
}

void check_tensor_for_write(const StTensor& t, const std::string& path) {
  ST_CHECK(!t.name.empty() && t.name != kMetadataKey, path, "invalid tensor name '" << t.name << "'");
  ST_CHECK(valid_utf8(t.name), path, "tensor name '" << t.name << "' is not valid UTF-8");
  size_t elem = safetensors_dtype_size(t.dtype);
  uint64_t want = 0;
  ST_CHECK(tensor_nbytes(t.shape, elem, &want), path,
           "tensor '" << t.name << "': invalid shape " << shape_str(t.shape));
  ST_CHECK(want == t.nbytes, path,
           "tensor '" << t.name << "': " << t.dtype << " " << shape_str(t.shape) << " needs " << want
                      << " bytes but nbytes is " << t.nbytes);
  ST_CHECK(t.data != nullptr || t.nbytes == 0, path, "tensor '" << t.name << "' has no data");
}

std::string build_header(const std::vector<StTensor>& tensors,
                         const std::map<std::string, std::string>& metadata, const std::string& path) {
  std::string h = "{";
  if (!metadata.empty()) {
    h += json_quote(kMetadataKey) + ":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      ST_CHECK(valid_utf8(k) && valid_utf8(v), path, "metadata '" << k << "' is not valid UTF-8");
      h += (first ? "" : ",") + json_quote(k) + ":" + json_quote(v);
      first = false;
    }
    h += "}";
  }
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const StTensor& t : tensors) {
    check_tensor_for_write(t, path);
    ST_CHECK(seen.insert(t.name).second, path, "duplicate tensor name '" << t.name << "'");
    std::ostringstream os;
    os << (h.size() > 1 ? "," : "") << json_quote(t.name) << ":{\"dtype\":" << json_quote(t.dtype)
       << ",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) os << (i ? "," : "") << t.shape[i];
    os << "],\"data_offsets\":[" << offset << "," << offset + t.nbytes << "]}";
    h += os.str();
    offset += t.nbytes;
  }
  h += "}";
  h.append((8 - h.size() % 8) % 8, ' ');  // keeps the data buffer 8-byte aligned in the file
  return h;
}

// ---------------------------------------------------------------------------------------------
// Reading

std::vector<char> read_whole_file(const std::string& path) {
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  SCMOE_CHECK_IO(f.fd >= 0, path, "cannot open safetensors file");
  struct stat st;
  SCMOE_CHECK_IO(::fstat(f.fd, &st) == 0, path, "cannot stat");
  ST_CHECK(S_ISREG(st.st_mode), path, "not a regular file");
  std::vector<char> bytes(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < bytes.size()) {
    ssize_t r = ::read(f.fd, bytes.data() + got, bytes.size() - got);
    if (r < 0 && errno == EINTR) continue;
    SCMOE_CHECK_IO(r >= 0, path, "read from");
    ST_CHECK(r > 0, path, "file shrank while reading (" << got << " of " << bytes.size() << " bytes)");
    got += static_cast<size_t>(r);
  }
  return bytes;
}

const Json& field(const Json& obj, const char* key, Json::Kind kind, const std::string& path,
                  const std::string& tensor) {
  auto it = std::find(obj.keys.begin(), obj.keys.end(), key);
  ST_CHECK(it != obj.keys.end(), path, "tensor '" << tensor << "': missing \"" << key << "\"");
  const Json& v = obj.items[static_cast<size_t>(it - obj.keys.begin())];
  ST_CHECK(v.kind == kind, path, "tensor '" << tensor << "': \"" << key << "\" must be " << kind_name(kind));
  return v;
}

std::vector<int64_t> int_array(const Json& arr, const char* key, const std::string& path,
                               const std::string& tensor) {
  std::vector<int64_t> out;
  for (const Json& x : arr.items) {
    ST_CHECK(x.kind == Json::kInt, path, "tensor '" << tensor << "': \"" << key << "\" must hold integers");
    out.push_back(x.num);
  }
  return out;
}

void parse_metadata(const Json& v, const std::string& path, StFile& f) {
  ST_CHECK(v.kind == Json::kObject, path, "\"" << kMetadataKey << "\" must be an object");
  for (size_t i = 0; i < v.keys.size(); ++i) {
    ST_CHECK(v.items[i].kind == Json::kString, path, "metadata '" << v.keys[i] << "' must be a string");
    f.metadata[v.keys[i]] = v.items[i].str;
  }
}

// Offsets are kept until the buffer position is known; data pointers are filled in afterwards.
struct Span {
  std::string name;
  uint64_t begin, end;
};

Span parse_tensor(const std::string& name, const Json& v, uint64_t buffer_size, const std::string& path,
                  StTensor* t) {
  ST_CHECK(v.kind == Json::kObject, path, "tensor '" << name << "': entry must be an object");
  for (const std::string& k : v.keys)
    ST_CHECK(k == "dtype" || k == "shape" || k == "data_offsets", path,
             "tensor '" << name << "': unknown field \"" << k << "\"");
  t->name = name;
  t->dtype = field(v, "dtype", Json::kString, path, name).str;
  t->shape = int_array(field(v, "shape", Json::kArray, path, name), "shape", path, name);
  std::vector<int64_t> off =
      int_array(field(v, "data_offsets", Json::kArray, path, name), "data_offsets", path, name);
  ST_CHECK(off.size() == 2, path, "tensor '" << name << "': \"data_offsets\" must hold two integers");
  ST_CHECK(off[0] >= 0 && off[0] <= off[1] && static_cast<uint64_t>(off[1]) <= buffer_size, path,
           "tensor '" << name << "': data_offsets [" << off[0] << ", " << off[1]
                      << "] are not within the data buffer of " << buffer_size << " bytes");
  size_t elem = 0;
  try {
    elem = safetensors_dtype_size(t->dtype);
  } catch (const Error&) {
    ST_FAIL(path, "tensor '" << name << "': unknown dtype '" << t->dtype << "'");
  }
  uint64_t want = 0;
  ST_CHECK(tensor_nbytes(t->shape, elem, &want), path,
           "tensor '" << name << "': invalid shape " << shape_str(t->shape));
  t->nbytes = static_cast<size_t>(off[1] - off[0]);
  ST_CHECK(want == t->nbytes, path,
           "tensor '" << name << "': " << t->dtype << " " << shape_str(t->shape) << " needs " << want
                      << " bytes but data_offsets [" << off[0] << ", " << off[1] << "] span " << t->nbytes);
  return {name, static_cast<uint64_t>(off[0]), static_cast<uint64_t>(off[1])};
}

// The reference implementation requires the tensors to tile the buffer exactly: no overlap, no holes.
void check_tiling(std::vector<Span> spans, uint64_t buffer_size, const std::string& path) {
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  const std::string* prev = nullptr;
  for (const Span& s : spans) {
    ST_CHECK(s.begin >= cursor, path,
             "tensor '" << s.name << "': data_offsets [" << s.begin << ", " << s.end << "] overlap tensor '"
                        << (prev ? *prev : "") << "' (which ends at " << cursor << ")");
    ST_CHECK(s.begin == cursor, path,
             "tensor '" << s.name << "': bytes [" << cursor << ", " << s.begin
                        << ") before it belong to no tensor");
    cursor = s.end;
    prev = &s.name;
  }
  ST_CHECK(cursor == buffer_size, path,
           "the data buffer has " << buffer_size - cursor << " trailing bytes after the last tensor");
}

}  // namespace

size_t safetensors_dtype_size(const std::string& dtype) {
  static const std::pair<const char*, size_t> kTable[] = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},  {"I32", 4},     {"I16", 2},     {"I8", 1},
      {"U64", 8}, {"U32", 4}, {"U16", 2}, {"U8", 1},   {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
  };
  for (const auto& [name, size] : kTable)
    if (dtype == name) return size;
  SCMOE_FAIL("unknown safetensors dtype '" << dtype << "'");
}

std::string tensor_checksum(const void* data, size_t nbytes) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", static_cast<unsigned>(crc32(data, nbytes)));
  return buf;
}

void safetensors_write(const std::string& path, const std::vector<StTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  for (const auto& kv : metadata)
    SCMOE_CHECK(kv.first.rfind(kChecksumPrefix, 0) != 0,
                path << ": metadata key '" << kv.first << "' is reserved for the tensors' checksums");
  build_header(tensors, metadata, path);  // validates (sizes, data present) before reading any tensor
  // Every tensor's checksum in the metadata, verified by read_into.
  std::map<std::string, std::string> md = metadata;
  for (const StTensor& t : tensors) md[kChecksumPrefix + t.name] = tensor_checksum(t.data, t.nbytes);
  const std::string header = build_header(tensors, md, path);
  char len[8];
  for (int i = 0; i < 8; ++i)
    len[i] = static_cast<char>((static_cast<uint64_t>(header.size()) >> (8 * i)) & 0xff);

  Fd f;
  f.fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  SCMOE_CHECK_IO(f.fd >= 0, path, "cannot create safetensors file");
  write_all(f.fd, len, sizeof len, path);
  write_all(f.fd, header.data(), header.size(), path);
  for (const StTensor& t : tensors) write_all(f.fd, static_cast<const char*>(t.data), t.nbytes, path);
  // EINVAL: the target (a pipe, a device) cannot be synced, which is not a data-loss risk.
  SCMOE_CHECK_IO(::fsync(f.fd) == 0 || errno == EINVAL, path, "fsync");
  int fd = f.fd;
  f.fd = -1;
  SCMOE_CHECK_IO(::close(fd) == 0, path, "close");  // NFS and quotas report late write errors here
}

StFile safetensors_parse(std::vector<char> bytes, const std::string& path) {
  ST_CHECK(bytes.size() >= 8, path,
           "file is " << bytes.size() << " bytes, too short for the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<size_t>(i)]);
  ST_CHECK(n <= bytes.size() - 8, path,
           "header length " << n << " exceeds the file size " << bytes.size()
                            << " (truncated or not safetensors)");
  const std::string text(bytes.data() + 8, static_cast<size_t>(n));
  ST_CHECK(valid_utf8(text), path, "header is not valid UTF-8");
  ST_CHECK(!text.empty() && text[0] == '{', path, "header does not start with '{' (not a safetensors file?)");
  const Json root = JsonParser(text, path).parse_document();

  StFile f;
  f.path = path;
  const size_t data_start = 8 + static_cast<size_t>(n);
  const uint64_t buffer_size = bytes.size() - data_start;
  std::vector<Span> spans;
  for (size_t i = 0; i < root.keys.size(); ++i) {
    if (root.keys[i] == kMetadataKey) {
      parse_metadata(root.items[i], path, f);
      continue;
    }
    StTensor t;
    spans.push_back(parse_tensor(root.keys[i], root.items[i], buffer_size, path, &t));
    f.tensors.emplace(t.name, std::move(t));
  }
  check_tiling(spans, buffer_size, path);
  // Checksums live apart from the caller's metadata (what a writer passed is what a reader gets).
  for (auto it = f.metadata.begin(); it != f.metadata.end();) {
    if (it->first.rfind(kChecksumPrefix, 0) == 0) {
      f.checksums[it->first.substr(std::strlen(kChecksumPrefix))] = it->second;
      it = f.metadata.erase(it);
    } else {
      ++it;
    }
  }

  f.blob = std::move(bytes);
  for (const Span& s : spans) f.tensors[s.name].data = f.blob.data() + data_start + s.begin;
  return f;
}

StFile safetensors_read(const std::string& path) { return safetensors_parse(read_whole_file(path), path); }

const StTensor& StFile::at(const std::string& name) const {
  auto it = tensors.find(name);
  if (it != tensors.end()) return it->second;
  std::ostringstream names;
  int shown = 0;
  for (const auto& kv : tensors) {
    if (shown++ == 8) {
      names << ", ...";
      break;
    }
    names << (shown > 1 ? ", " : "") << kv.first;
  }
  SCMOE_FAIL("tensor '" << name << "' not found in '" << path << "' (it has " << tensors.size()
                        << " tensors: " << names.str() << ")");
}

void StFile::verify(const std::string& name) const {
  const StTensor& t = at(name);
  auto it = checksums.find(name);
  if (it != checksums.end()) {
    const std::string got = tensor_checksum(t.data, t.nbytes);
    SCMOE_CHECK(got == it->second, "tensor '" << name << "' in " << path
                                              << " fails its checksum (stored crc32 " << it->second
                                              << ", the bytes give " << got
                                              << "): the file is corrupt; copy it again or resume from an "
                                                 "earlier checkpoint");
  }
  // A non-finite value: the file is damaged, or training had diverged before it was written.
  auto first_bad = [&](auto zero) -> int64_t {
    using F = decltype(zero);
    const size_t n = t.nbytes / sizeof(F);
    for (size_t i = 0; i < n; i++) {
      F v;
      std::memcpy(&v, static_cast<const char*>(t.data) + i * sizeof(F), sizeof(F));
      if (!std::isfinite(v)) return int64_t(i);
    }
    return -1;
  };
  const int64_t bad = t.dtype == "F32" ? first_bad(0.f) : t.dtype == "F64" ? first_bad(0.0) : -1;
  SCMOE_CHECK(bad < 0,
              "tensor '" << name << "' in " << path << " holds a non-finite value at element " << bad
                         << ": the checkpoint is corrupt, or training had diverged before it was written");
}

void StFile::read_into(const std::string& name, const std::string& dtype, void* out, size_t nbytes) const {
  const StTensor& t = at(name);
  SCMOE_CHECK(t.dtype == dtype && t.nbytes == nbytes,
              "tensor '" << name << "' in " << path << ": expected " << dtype << " with " << nbytes
                         << " bytes, file has " << t.dtype << " with " << t.nbytes << " bytes (shape "
                         << shape_str(t.shape) << ")");
  verify(name);
  if (nbytes > 0) std::memcpy(out, t.data, nbytes);
}

}  // namespace scmoe
