// `train generate`: loads a checkpoint and continues a prompt token by token with a KV cache (and,
// with inference.offload_experts, a device cache of routed experts), printing the continuation to
// stdout as it comes and the figures (tokens/s, per-token latency, memory, migration) to stderr.
#pragma once
#include <cstdint>
#include <string>

#include "infer/sampler.h"
#include "train/config.h"

namespace scmoe {

struct GenerateOptions {
  std::string resume;               // auto | a checkpoint directory (required)
  std::string prompt, prompt_file;  // exactly one of them
  bool prompt_given = false, prompt_file_given = false;
  int max_new_tokens = 256;
  uint64_t seed = 0;
  SamplingOptions sampling;
};

// Returns the process exit status.
int run_generate(const Config& cfg, const GenerateOptions& opt);

}  // namespace scmoe
