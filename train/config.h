// The run configuration: built from defaults (core/config.h), a YAML file and --set overrides, every key
// validated against a single schema table (which also generates docs/config.md).
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "core/config.h"

namespace scmoe {

// Loads `path` (may be empty: defaults only) then applies each "a.b=c" override in order (last wins).
// Throws scmoe::Error naming the file (or "--set"), the key path and what was expected; unknown keys
// get a "did you mean ..." suggestion. Cross-key checks (d_model % n_head, ...) run at the end.
Config load_config(const std::string& path, const std::vector<std::string>& overrides);

// Parses YAML text (for tests and the fuzzer); `origin` names the source in error messages.
Config parse_config_text(const std::string& yaml_text, const std::string& origin,
                         const std::vector<std::string>& overrides = {});

// The resolved config as YAML (every key, printed at start and saved with checkpoints).
std::string config_to_yaml(const Config& c);

// Every key with its resolved value as config_to_yaml writes it ("optim.lr", "0.001"), in schema order.
std::vector<std::pair<std::string, std::string>> config_key_values(const Config& c);

// Markdown table of every key: key, type, default, allowed values, meaning (docs/config.md).
std::string config_reference_markdown();

}  // namespace scmoe
