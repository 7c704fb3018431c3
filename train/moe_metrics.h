// Accumulates what the MoE layers observed over the micro-steps of one optimizer step and turns it
// into metrics fields (per layer and summarised) and the step line's suffix.
#pragma once
#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "model/moe.h"

namespace scmoe {

class MoeStepStats {
 public:
  void reset() { layers_.clear(), aux_total_ = 0, micro_ = 0; }

  // Call after each micro-step's forward with the model's moe_stats() and aux_loss().
  void add(const std::vector<std::pair<int, MoeStats>>& stats, double aux_total) {
    micro_++;
    aux_total_ += aux_total;
    for (const auto& [l, s] : stats) {
      Layer& L = layers_[l];
      L.aux += s.aux, L.z += s.z, L.dropped += s.dropped, L.assignments += s.assignments;
      L.tokens.resize(s.tokens_per_expert.size(), 0);
      for (size_t e = 0; e < L.tokens.size(); e++) L.tokens[e] += s.tokens_per_expert[e];
    }
  }

  bool empty() const { return layers_.empty(); }

  // Sums the per-rank counts (each rank counts its own experts' rows) so every rank reports global load.
  void reduce(Communicator* comm) {
    if (!comm || layers_.empty()) return;
    std::vector<int64_t> buf;
    for (auto& [l, L] : layers_) {
      buf.insert(buf.end(), L.tokens.begin(), L.tokens.end());
      buf.push_back(L.dropped), buf.push_back(L.assignments);
    }
    comm->all_reduce_sum(buf.data(), buf.size(), DType::i64, nullptr);
    size_t i = 0;
    for (auto& [l, L] : layers_) {
      for (auto& t : L.tokens) t = buf[i++];
      L.dropped = buf[i++], L.assignments = buf[i++];
    }
  }

  // Fields for metrics.jsonl: aux_loss, moe_load_max, moe_drop_frac, and moe<l>_{load_max,drop_frac,aux,z}.
  std::vector<std::pair<std::string, double>> fields() const {
    std::vector<std::pair<std::string, double>> f;
    if (layers_.empty()) return f;
    double worst_load = 0;
    int64_t dropped = 0, total = 0;
    for (const auto& [l, L] : layers_) {
      std::string p = "moe" + std::to_string(l) + "_";
      f.push_back({p + "load_max", L.load_max()});
      f.push_back({p + "drop_frac", L.assignments ? double(L.dropped) / L.assignments : 0.0});
      f.push_back({p + "aux", L.aux / micro_});
      f.push_back({p + "z", L.z / micro_});
      worst_load = std::max(worst_load, L.load_max());
      dropped += L.dropped, total += L.assignments;
    }
    f.insert(f.begin(), {{"aux_loss", aux_total_ / micro_},
                         {"moe_load_max", worst_load},
                         {"moe_drop_frac", total ? double(dropped) / total : 0.0}});
    return f;
  }

  // " | aux 0.0101 | load 1.42 | drop 0.8%" (empty for dense models).
  std::string summary() const {
    if (layers_.empty()) return "";
    auto f = fields();
    char buf[96];
    std::snprintf(buf, sizeof buf, " | aux %.4f | load %.2f | drop %.1f%%", f[0].second, f[1].second,
                  100.0 * f[2].second);
    return buf;
  }

 private:
  struct Layer {
    double aux = 0, z = 0;
    int64_t dropped = 0, assignments = 0;
    std::vector<int64_t> tokens;
    // max_e tokens_e / mean_e tokens_e: 1 is perfect balance, E means one expert took everything.
    double load_max() const {
      int64_t mx = 0, sum = 0;
      for (auto t : tokens) mx = std::max(mx, t), sum += t;
      return sum ? double(mx) * tokens.size() / double(sum) : 0.0;
    }
  };
  std::map<int, Layer> layers_;
  double aux_total_ = 0;
  int micro_ = 0;
};

}  // namespace scmoe
