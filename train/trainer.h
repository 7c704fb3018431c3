// The training loop: micro-batches with gradient accumulation, AdamW with clipping and schedule,
// validation, metrics, checkpoints (periodic, on SIGINT/SIGTERM, at the end), resume and eval-only.
#pragma once
#include <string>

#include "train/config.h"

namespace scmoe {

struct RunOptions {
  std::string resume;      // "", "auto" or a checkpoint directory
  bool eval_only = false;
};

// Returns the process exit status (0 success; 128+signal after a checkpoint on SIGINT/SIGTERM).
int run_training(const Config& cfg, const RunOptions& opt);

// Installs SIGINT/SIGTERM handlers that ask the loop to checkpoint and stop after the current step.
void install_stop_signal_handlers();

}  // namespace scmoe
