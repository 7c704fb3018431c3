// The text side of generation: prompts to token ids and ids back to bytes, with the tokenizer the data
// set was prepared with (data/prepare.py): `byte` (built in) or `gpt2` (tiktoken's GPT-2 BPE, run
// through python3 as prepare.py runs it: once to encode the prompt, once for every token's bytes).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/config.h"

namespace scmoe {

class Tokenizer {
 public:
  // cfg.inference.tokenizer: byte | gpt2 | auto. auto reads "tokenizer" from the meta.json that
  // data/prepare.py wrote beside the data.train (or data.val) shards; without one it takes byte when
  // model.vocab_size is 256 and fails otherwise. `notice` says what was chosen and why.
  static Tokenizer for_config(const Config& cfg, std::string* notice);
  static Tokenizer byte();
  static Tokenizer gpt2();  // needs python3 with tiktoken; a clear error otherwise
  // A gpt2 tokenizer from its vocabulary as the script prints it: one line of lowercase hex per token.
  static Tokenizer from_vocab_lines(const std::string& text);

  const std::string& name() const { return name_; }
  std::vector<int32_t> encode(const std::string& text) const;
  // The bytes of one token (a multi-byte character may span tokens); U+FFFD for an id the tokenizer
  // does not know (a model vocabulary padded beyond the tokenizer's).
  std::string decode(int32_t token) const;
  int vocab_size() const { return name_ == "byte" ? 256 : int(pieces_.size()); }

 private:
  std::string name_;
  std::vector<std::string> pieces_;  // gpt2: every token's bytes
};

// The tokenizer data/prepare.py recorded in the meta.json beside a shard glob ("" when none is found).
std::string tokenizer_from_meta(const std::string& shard_glob);
// The "tokenizer" string of a meta.json's text ("" when absent; an error naming `path` when malformed).
std::string tokenizer_from_meta_json(const std::string& text, const std::string& path);
// Whitespace-separated token ids, each in [0, vocab_size); an error naming the first that is not.
std::vector<int32_t> parse_token_ids(const std::string& text, int vocab_size);

}  // namespace scmoe
