// What a checkpoint holds and how the trainer writes/reads it (docs/design.md section 4):
//   model.safetensors                  every replicated (non-expert) parameter and the MoE layers'
//                                      expert biases (fp32 state, no optimizer moments), written by rank 0
//   experts-rankRRRRR-of-WWWWW.safetensors  rank R's routed-expert tensors (MoE models only)
//   optim-rankRRRRR-of-WWWWW.safetensors    rank R's AdamW moments ("m.<name>", "v.<name>"); its
//                      __metadata__ holds the training state (step, optimizer t, data position, RNG
//                      state, dtype, world size, expert placement)
//   config.yaml                        the resolved configuration
// Tensor names are global (expert e of block l is blocks.l.moe.experts.e.*), so re-sharding to another
// world size only regroups files (scripts/reshard_checkpoint.py).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/params.h"

namespace scmoe {

struct TrainState {
  int64_t step = 0;            // optimizer steps completed
  int64_t adam_t = 0;
  uint64_t data_epoch = 0, data_cursor = 0;
  uint64_t rng_state = 0;
  int64_t tokens_seen = 0;
  std::map<std::string, std::string> to_metadata(const std::string& dtype) const;
  static TrainState from_metadata(const std::map<std::string, std::string>& md, const std::string& file);
};

// Which tensors a file holds.
enum class Subset { all, replicated, experts };

// Named fp32 vectors of model state outside the parameter table and the optimizer (the MoE layers'
// expert biases, "blocks.<l>.moe.expert_bias"), stored in model.safetensors beside the parameters.
using StateTensors = std::vector<std::pair<std::string, std::vector<float>>>;
bool is_state_tensor(const std::string& name);

template <class T>
void write_model_file(const std::string& path, const ParamTable& table, const T* params, Subset subset,
                      const std::map<std::string, std::string>& metadata = {}, const StateTensors& state = {});
// Reads the table's tensors of `subset`; the file's state tensors go to `state` (when given; otherwise
// they are skipped). Any other tensor is an error (a checkpoint of another model).
template <class T>
void read_model_file(const std::string& path, const ParamTable& table, T* params, Subset subset,
                     StateTensors* state = nullptr);

// Every routed-expert tensor from a checkpoint directory's experts-rank*-of-W files, whatever W (one
// process holding all experts, as generation does). Each tensor must be present exactly once.
template <class T>
void read_all_experts(const std::string& dir, const ParamTable& table, T* params);

std::string experts_file_name(int rank, int world);  // "experts-rank00001-of-00004.safetensors"
std::string optim_file_name(int rank, int world);    // "optim-rank00001-of-00004.safetensors"

template <class T>
void write_optim_file(const std::string& path, const ParamTable& table, const T* m, const T* v,
                      const std::map<std::string, std::string>& metadata);
// Returns the file's metadata.
template <class T>
std::map<std::string, std::string> read_optim_file(const std::string& path, const ParamTable& table, T* m,
                                                    T* v);

template <class T>
const char* st_dtype();

}  // namespace scmoe
