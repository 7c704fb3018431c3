// libFuzzer target for what generation reads besides the checkpoint: a data set's meta.json (the
// tokenizer's name), the gpt2 tokenizer's vocabulary listing and its token-id output. Input layout:
// meta.json text, NUL, vocabulary lines, NUL, token-id text. Each part gives a result or a
// scmoe::Error; decoding any id never reads outside the vocabulary.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/check.h"
#include "data/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t a = input.find('\0');
  const size_t b = a == std::string::npos ? a : input.find('\0', a + 1);
  const std::string meta = input.substr(0, a);
  const std::string vocab =
      a == std::string::npos ? "" : input.substr(a + 1, b == std::string::npos ? b : b - a - 1);
  const std::string ids = b == std::string::npos ? "" : input.substr(b + 1);
  try {
    const std::string kind = scmoe::tokenizer_from_meta_json(meta, "fuzz_meta.json");
    if (kind.find('"') != std::string::npos) std::abort();  // the value stops at its closing quote
  } catch (const scmoe::Error&) {
  }
  try {
    const scmoe::Tokenizer t = scmoe::Tokenizer::from_vocab_lines(vocab);
    for (int32_t id : {-1, 0, 1, t.vocab_size() - 1, t.vocab_size(), INT32_MAX, INT32_MIN}) t.decode(id);
    for (int32_t id : scmoe::parse_token_ids(ids, t.vocab_size()))
      if (id < 0 || id >= t.vocab_size()) std::abort();
  } catch (const scmoe::Error&) {
  }
  return 0;
}
