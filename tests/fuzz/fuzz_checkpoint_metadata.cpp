// libFuzzer target for a checkpoint's training state (TrainState::from_metadata): lines "key=value"
// become the metadata map; the result is an Error or a state whose counts are not negative and that
// reads back the same after writing.
#include <cstdint>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>

#include "core/check.h"
#include "train/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::map<std::string, std::string> md;
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  for (std::string line; std::getline(in, line);) {
    const size_t eq = line.find('=');
    if (eq != std::string::npos) md[line.substr(0, eq)] = line.substr(eq + 1);
  }
  scmoe::TrainState s;
  try {
    s = scmoe::TrainState::from_metadata(md, "fuzz");
  } catch (const scmoe::Error&) {
    return 0;
  }
  if (s.step < 0 || s.adam_t < 0 || s.tokens_seen < 0) std::abort();
  // What is written back reads back the same (leading zeros, accepted on reading, are not written).
  const scmoe::TrainState t = scmoe::TrainState::from_metadata(s.to_metadata("F32"), "round trip");
  if (t.step != s.step || t.adam_t != s.adam_t || t.data_epoch != s.data_epoch ||
      t.data_cursor != s.data_cursor || t.rng_state != s.rng_state || t.tokens_seen != s.tokens_seen)
    std::abort();
  return 0;
}
