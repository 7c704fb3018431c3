// What a checkpoint holds and how the trainer writes/reads it (DESIGN.md section 4):
//   model.safetensors  every parameter under its documented name (README "Checkpoint layout")
//   optim.safetensors  AdamW moments as "m.<name>" and "v.<name>"; __metadata__ holds the training
//                      state (step, optimizer t, data position, RNG state, dtype, world size)
//   config.yaml        the resolved configuration
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/params.h"

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

template <class T>
void write_model_file(const std::string& path, const ParamTable& table, const T* params,
                      const std::map<std::string, std::string>& metadata = {});
template <class T>
void read_model_file(const std::string& path, const ParamTable& table, T* params);

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
