// Token shards in llm.c's format: 256 x int32 header (magic 20240520, version, token count), then tokens
// as uint16 (version 1) or uint32 (version 2, our extension for vocabularies above 65535).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace scmoe {

constexpr int32_t kShardMagic = 20240520;
constexpr size_t kShardHeaderInts = 256;

struct ShardInfo {
  std::string path;
  int version = 1;          // 1: uint16 tokens, 2: uint32 tokens
  int64_t num_tokens = 0;
  size_t token_bytes() const { return version == 1 ? 2 : 4; }
};

// Validates a header held in memory (`bytes` may be shorter than the header: error). `file_size` is
// the file's total size, checked against the header's token count. Throws scmoe::Error naming `path`.
ShardInfo parse_shard_header(const void* bytes, size_t nbytes, uint64_t file_size, const std::string& path);

// Opens and validates one shard's header.
ShardInfo read_shard_info(const std::string& path);

// Reads tokens [start, start+count) of a shard, checking each is < vocab_size. `raw` (optional): a
// reusable buffer for the bytes read.
void read_shard_tokens(const ShardInfo& s, int64_t start, int64_t count, int vocab_size, int32_t* out,
                       std::vector<unsigned char>* raw = nullptr);

// Checks every token of a shard against the vocabulary, reading it in large chunks (a vectorised
// maximum per chunk): the first token >= vocab_size is an error naming the shard, the token and its
// position, and `key` (the config key of the shard glob).
void check_shard_tokens(const ShardInfo& s, int vocab_size, const std::string& key);

// Writes a shard (version 1 if every token < 65536, else 2) atomically (temp file + rename).
void write_shard(const std::string& path, const std::vector<uint32_t>& tokens, int version = 0);

// Sorted list of files matching a glob; error naming the pattern and the config key when empty.
std::vector<std::string> glob_shards(const std::string& pattern, const std::string& key);

}  // namespace scmoe
