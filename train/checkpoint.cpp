// Checkpoint contents (see checkpoint.h).
#include "train/checkpoint.h"

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <set>

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
  // Each field whole and in range: a damaged file fails here, naming the key, not later as a strange
  // step count or data position.
  auto get = [&](const char* k, bool is_signed) -> uint64_t {
    auto it = md.find(k);
    SCMOE_CHECK(it != md.end(), file << ": checkpoint metadata lacks '" << k << "'");
    const std::string& v = it->second;
    size_t used = 0;
    uint64_t x = 0;
    try {
      if (!v.empty() && v[0] != '-' && v[0] != '+' && !std::isspace(static_cast<unsigned char>(v[0])))
        x = std::stoull(v, &used);
    } catch (const std::logic_error&) {
      used = 0;
    }
    SCMOE_CHECK(used > 0 && used == v.size() && (!is_signed || x <= uint64_t(INT64_MAX)),
                file << ": checkpoint metadata '" << k << "' is '" << v.substr(0, 40) << "', not a "
                     << (is_signed ? "count" : "number") << " (the file is damaged)");
    return x;
  };
  TrainState s;
  s.step = int64_t(get("step", true));
  s.adam_t = int64_t(get("adam_t", true));
  s.data_epoch = get("data_epoch", false);
  s.data_cursor = get("data_cursor", false);
  s.rng_state = get("rng_state", false);
  s.tokens_seen = int64_t(get("tokens_seen", true));
  return s;
}

static bool in_subset(const ParamSpec& s, Subset subset) {
  return subset == Subset::all || (subset == Subset::experts) == s.expert;
}

static std::string rank_file(const char* stem, int rank, int world) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "%s-rank%05d-of-%05d.safetensors", stem, rank, world);
  return buf;
}
std::string experts_file_name(int rank, int world) { return rank_file("experts", rank, world); }
std::string optim_file_name(int rank, int world) { return rank_file("optim", rank, world); }

template <class T>
static std::vector<StTensor> views(const ParamTable& table, const T* base, const std::string& prefix,
                                   Subset subset = Subset::all) {
  std::vector<StTensor> out;
  for (const auto& s : table.specs())
    if (in_subset(s, subset))
      out.push_back({prefix + s.name, st_dtype<T>(), s.shape, base + s.offset, s.numel * sizeof(T)});
  return out;
}

bool is_state_tensor(const std::string& name) {
  const std::string tail = ".moe.expert_bias";
  return name.size() > tail.size() && name.compare(name.size() - tail.size(), tail.size(), tail) == 0;
}

template <class T>
void write_model_file(const std::string& path, const ParamTable& table, const T* params, Subset subset,
                      const std::map<std::string, std::string>& metadata, const StateTensors& state) {
  std::vector<StTensor> t = views(table, params, "", subset);
  for (const auto& [name, v] : state) {
    SCMOE_CHECK(is_state_tensor(name), "'" << name << "' is not a state tensor of the model");
    t.push_back({name, "F32", {int64_t(v.size())}, v.data(), v.size() * sizeof(float)});
  }
  safetensors_write(path, t, metadata);
}

template <class T>
void read_model_file(const std::string& path, const ParamTable& table, T* params, Subset subset,
                     StateTensors* state) {
  StFile f = safetensors_read(path);
  size_t expected = 0;
  if (state) state->clear();
  for (const auto& [name, t] : f.tensors) {
    if (!is_state_tensor(name)) continue;
    expected++;  // held beside the parameters; the caller decides what to do with them
    if (!state) continue;
    SCMOE_CHECK(t.shape.size() == 1, path << ": state tensor '" << name << "' is not a vector");
    std::vector<float> v(size_t(t.shape[0]));
    f.read_into(name, "F32", v.data(), v.size() * sizeof(float));
    state->push_back({name, std::move(v)});
  }
  for (const auto& s : table.specs()) {
    if (!in_subset(s, subset)) continue;
    expected++;
    SCMOE_CHECK(f.tensors.count(s.name), path << ": tensor '" << s.name
                                              << "' missing (was the checkpoint written with another model config?)");
    f.read_into(s.name, st_dtype<T>(), params + s.offset, s.numel * sizeof(T));
  }
  SCMOE_CHECK(f.tensors.size() == expected, path << " holds " << f.tensors.size() << " tensors, this model expects "
                                                 << expected << " (checkpoint of another model config?)");
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

template <class T>
void read_all_experts(const std::string& dir, const ParamTable& table, T* params) {
  namespace fs = std::filesystem;
  int world = 0;
  std::string seen_name;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    int r = 0, w = 0;
    if (std::sscanf(n.c_str(), "experts-rank%d-of-%d.safetensors", &r, &w) == 2 && n == experts_file_name(r, w)) {
      SCMOE_CHECK(world == 0 || w == world, dir << " holds expert files of two world sizes (" << seen_name << ", " << n
                                                << "); keep one set");
      world = w, seen_name = n;
    }
  }
  SCMOE_CHECK(world > 0, dir << ": no experts-rank*-of-*.safetensors (a checkpoint of a dense model, or incomplete?)");
  std::map<std::string, const ParamSpec*> wanted;
  for (const auto& s : table.specs())
    if (s.expert) wanted[s.name] = &s;
  std::set<std::string> got;
  for (int r = 0; r < world; r++) {
    const std::string path = (fs::path(dir) / experts_file_name(r, world)).string();
    SCMOE_CHECK(fs::exists(path), path << " missing: the checkpoint's expert shards are incomplete");
    StFile f = safetensors_read(path);
    for (const auto& [name, t] : f.tensors) {
      auto it = wanted.find(name);
      SCMOE_CHECK(it != wanted.end(), path << ": tensor '" << name
                                           << "' is not an expert of this model (checkpoint of another model config?)");
      SCMOE_CHECK(got.insert(name).second, path << ": tensor '" << name << "' appears in two expert shards");
      f.read_into(name, st_dtype<T>(), params + it->second->offset, it->second->numel * sizeof(T));
    }
  }
  for (const auto& [name, spec] : wanted)
    SCMOE_CHECK(got.count(name), dir << ": expert tensor '" << name << "' missing from the "
                                     << world << " expert shards (checkpoint of another model config?)");
}

#define SCMOE_INSTANTIATE(T)                                                                              \
  template void write_model_file<T>(const std::string&, const ParamTable&, const T*, Subset,              \
                                    const std::map<std::string, std::string>&, const StateTensors&);      \
  template void read_model_file<T>(const std::string&, const ParamTable&, T*, Subset, StateTensors*);     \
  template void read_all_experts<T>(const std::string&, const ParamTable&, T*);                           \
  template void write_optim_file<T>(const std::string&, const ParamTable&, const T*, const T*,           \
                                    const std::map<std::string, std::string>&);                           \
  template std::map<std::string, std::string> read_optim_file<T>(const std::string&, const ParamTable&, T*, \
                                                                 T*);
SCMOE_INSTANTIATE(float)
SCMOE_INSTANTIATE(double)

}  // namespace scmoe
