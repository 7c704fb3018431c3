// Checkpoint contents (see checkpoint.h).
#include "train/checkpoint.h"

#include "core/check.h"
#include "train/safetensors.h"

namespace scmoe {

template <>
const char* st_dtype<float>() { return "F32"; }
template <>
const char* st_dtype<double>() { return "F64"; }

std::map<std::string, std::string> TrainState::to_metadata(const std::string& dtype) const {
  return {{"step", std::to_string(step)},           {"adam_t", std::to_string(adam_t)},
          {"data_epoch", std::to_string(data_epoch)}, {"data_cursor", std::to_string(data_cursor)},
          {"rng_state", std::to_string(rng_state)},   {"tokens_seen", std::to_string(tokens_seen)},
          {"dtype", dtype},                            {"format", "scmoe-checkpoint-1"}};
}

TrainState TrainState::from_metadata(const std::map<std::string, std::string>& md, const std::string& file) {
  auto get = [&](const char* k) -> const std::string& {
    auto it = md.find(k);
    SCMOE_CHECK(it != md.end(), file << ": checkpoint metadata lacks '" << k << "'");
    return it->second;
  };
  TrainState s;
  try {
    s.step = std::stoll(get("step"));
    s.adam_t = std::stoll(get("adam_t"));
    s.data_epoch = std::stoull(get("data_epoch"));
    s.data_cursor = std::stoull(get("data_cursor"));
    s.rng_state = std::stoull(get("rng_state"));
    s.tokens_seen = std::stoll(get("tokens_seen"));
  } catch (const std::logic_error&) {
    SCMOE_FAIL(file << ": checkpoint metadata holds a malformed number");
  }
  return s;
}

template <class T>
static std::vector<StTensor> views(const ParamTable& table, const T* base, const std::string& prefix) {
  std::vector<StTensor> out;
  for (const auto& s : table.specs())
    out.push_back({prefix + s.name, st_dtype<T>(), s.shape, base + s.offset, s.numel * sizeof(T)});
  return out;
}

template <class T>
void write_model_file(const std::string& path, const ParamTable& table, const T* params,
                      const std::map<std::string, std::string>& metadata) {
  safetensors_write(path, views(table, params, ""), metadata);
}

template <class T>
void read_model_file(const std::string& path, const ParamTable& table, T* params) {
  StFile f = safetensors_read(path);
  for (const auto& s : table.specs()) {
    SCMOE_CHECK(f.tensors.count(s.name), path << ": tensor '" << s.name
                                              << "' missing (was the checkpoint written with another model config?)");
    f.read_into(s.name, st_dtype<T>(), params + s.offset, s.numel * sizeof(T));
  }
  for (const auto& [name, t] : f.tensors) {
    bool known = false;
    for (const auto& s : table.specs()) known = known || s.name == name;
    SCMOE_CHECK(known, path << ": unexpected tensor '" << name << "' (checkpoint of another model config?)");
  }
}

template <class T>
void write_optim_file(const std::string& path, const ParamTable& table, const T* m, const T* v,
                      const std::map<std::string, std::string>& metadata) {
  auto t = views(table, m, "m.");
  auto tv = views(table, v, "v.");
  t.insert(t.end(), tv.begin(), tv.end());
  safetensors_write(path, t, metadata);
}

template <class T>
std::map<std::string, std::string> read_optim_file(const std::string& path, const ParamTable& table, T* m,
                                                    T* v) {
  StFile f = safetensors_read(path);
  for (const auto& s : table.specs()) {
    f.read_into("m." + s.name, st_dtype<T>(), m + s.offset, s.numel * sizeof(T));
    f.read_into("v." + s.name, st_dtype<T>(), v + s.offset, s.numel * sizeof(T));
  }
  return f.metadata;
}

#define SCMOE_INSTANTIATE(T)                                                                              \
  template void write_model_file<T>(const std::string&, const ParamTable&, const T*,                      \
                                    const std::map<std::string, std::string>&);                           \
  template void read_model_file<T>(const std::string&, const ParamTable&, T*);                            \
  template void write_optim_file<T>(const std::string&, const ParamTable&, const T*, const T*,           \
                                    const std::map<std::string, std::string>&);                           \
  template std::map<std::string, std::string> read_optim_file<T>(const std::string&, const ParamTable&, T*, \
                                                                 T*);
SCMOE_INSTANTIATE(float)
SCMOE_INSTANTIATE(double)

}  // namespace scmoe
