// libFuzzer target for the config parser: any input may be rejected with scmoe::Error, nothing else
// may escape, and whatever is accepted must round-trip exactly through config_to_yaml.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/check.h"
#include "train/config.h"

// Input layout: YAML text, then optional NUL-separated --set arguments (so overrides are fuzzed too).
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const std::string yaml = input.substr(0, nul);
  std::vector<std::string> sets;
  for (size_t at = nul; at != std::string::npos && at < input.size();) {
    const size_t next = input.find('\0', at + 1);
    sets.push_back(input.substr(at + 1, next == std::string::npos ? std::string::npos : next - at - 1));
    at = next;
  }
  scmoe::Config c;
  try {
    c = scmoe::parse_config_text(yaml, "fuzz", sets);
  } catch (const scmoe::Error&) {
    return 0;  // rejected with a message: fine
  }
  // Outside the try: an accepted config that does not read back is a bug, thrown or not.
  const std::string printed = scmoe::config_to_yaml(c);
  if (scmoe::config_to_yaml(scmoe::parse_config_text(printed, "round trip")) != printed) std::abort();
  return 0;
}
