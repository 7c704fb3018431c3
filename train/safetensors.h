// Minimal safetensors reader/writer (https://huggingface.co/docs/safetensors): 8-byte little-endian
// header length, JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, raw data.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace scmoe {

struct StTensor {
  std::string name;
  std::string dtype;  // F64 F32 F16 BF16 I64 I32 I16 I8 U64 U32 U16 U8 BOOL F8_E4M3 F8_E5M2
  std::vector<int64_t> shape;
  const void* data = nullptr;  // for writing: borrowed pointer
  size_t nbytes = 0;
};

// Bytes per element of a safetensors dtype; throws scmoe::Error for an unknown one.
size_t safetensors_dtype_size(const std::string& dtype);

// Every tensor's CRC-32 (core/crc32.h, 8 lowercase hex digits) is stored in the metadata under this
// prefix + its name; readers verify it (StFile::read_into), scripts/reshard_checkpoint.py too.
constexpr const char* kChecksumPrefix = "crc32:";
std::string tensor_checksum(const void* data, size_t nbytes);

// Writes tensors (in the given order) and string metadata (plus each tensor's checksum) to `path`;
// fsyncs before returning. Throws scmoe::Error on any I/O failure (e.g. disk full), naming the path.
void safetensors_write(const std::string& path, const std::vector<StTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

struct StFile {
  std::map<std::string, std::string> metadata;   // as written (the checksums taken out)
  std::map<std::string, std::string> checksums;  // tensor name -> its crc32 (files by other tools: none)
  std::map<std::string, StTensor> tensors;  // data points into `blob`
  std::vector<char> blob;                   // the whole file
  // Copies tensor `name` into `out` after checking dtype and element count, its checksum (when the
  // file has one) and that it holds only finite values (F32, F64); errors name file and tensor.
  void read_into(const std::string& name, const std::string& dtype, void* out, size_t nbytes) const;
  // The checksum and finiteness checks of read_into alone.
  void verify(const std::string& name) const;
  // The tensor `name`; error naming file+tensor when absent.
  const StTensor& at(const std::string& name) const;
  std::string path;

  // Tensors point into `blob`: a copy would dangle, a move keeps the buffer.
  StFile() = default;
  StFile(const StFile&) = delete;
  StFile& operator=(const StFile&) = delete;
  StFile(StFile&&) = default;
  StFile& operator=(StFile&&) = default;
};

// Reads and validates the whole file (header JSON, offsets within the file, no overlaps).
StFile safetensors_read(const std::string& path);

// Validates in-memory file bytes; `path` only names the source in errors (used by tests and fuzzers).
StFile safetensors_parse(std::vector<char> bytes, const std::string& path);

}  // namespace scmoe
