// Accumulates what the MoE layers observed over the micro-steps of one optimizer step and turns it
// into metrics fields (per layer and summarised) and the step line's suffix.
#pragma once
#include <algorithm>
#include <cmath>
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
      L.aux += s.aux, L.z += s.z, L.seq += s.seq, L.dropped += s.dropped, L.assignments += s.assignments;
      L.tokens.resize(s.tokens_per_expert.size(), 0);
      for (size_t e = 0; e < L.tokens.size(); e++) L.tokens[e] += s.tokens_per_expert[e];
      L.routed.resize(s.routed.size(), 0);  // global already: not part of reduce()
      for (size_t e = 0; e < L.routed.size(); e++) L.routed[e] += s.routed[e];
      L.bias_min = s.bias_min, L.bias_max = s.bias_max;
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

  // Fields for metrics.jsonl: aux_loss, moe_load_max, moe_drop_frac, moe_routed_max, moe_routed_cv and
  // moe<l>_{load_max,drop_frac,aux,z,routed_max,routed_cv} (+ seq_aux with moe.seq_aux_loss_coef,
  // bias_min/bias_max with moe.expert_bias). load_*: rows the experts admitted (after capacity);
  // routed_*: the router's assignments before capacity (what the expert bias balances).
  std::vector<std::pair<std::string, double>> fields() const {
    std::vector<std::pair<std::string, double>> f;
    if (layers_.empty()) return f;
    double worst_load = 0, worst_routed = 0, cv_sum = 0;
    int64_t dropped = 0, total = 0;
    for (const auto& [l, L] : layers_) {
      std::string p = "moe" + std::to_string(l) + "_";
      f.push_back({p + "load_max", max_over_mean(L.tokens)});
      f.push_back({p + "drop_frac", L.assignments ? double(L.dropped) / L.assignments : 0.0});
      f.push_back({p + "aux", L.aux / micro_});
      f.push_back({p + "z", L.z / micro_});
      f.push_back({p + "routed_max", max_over_mean(L.routed)});
      f.push_back({p + "routed_cv", coefficient_of_variation(L.routed)});
      if (L.seq != 0) f.push_back({p + "seq_aux", L.seq / micro_});
      if (L.bias_min != 0 || L.bias_max != 0) {
        f.push_back({p + "bias_min", L.bias_min});
        f.push_back({p + "bias_max", L.bias_max});
      }
      worst_load = std::max(worst_load, max_over_mean(L.tokens));
      worst_routed = std::max(worst_routed, max_over_mean(L.routed));
      cv_sum += coefficient_of_variation(L.routed);
      dropped += L.dropped, total += L.assignments;
    }
    f.insert(f.begin(), {{"aux_loss", aux_total_ / micro_},
                         {"moe_load_max", worst_load},
                         {"moe_drop_frac", total ? double(dropped) / total : 0.0},
                         {"moe_routed_max", worst_routed},
                         {"moe_routed_cv", cv_sum / double(layers_.size())}});
    return f;
  }

  // max_e v_e / mean_e v_e: 1 is perfect balance, E means one expert took everything.
  static double max_over_mean(const std::vector<int64_t>& v) {
    int64_t mx = 0, sum = 0;
    for (auto t : v) mx = std::max(mx, t), sum += t;
    return sum ? double(mx) * double(v.size()) / double(sum) : 0.0;
  }
  // std_e v_e / mean_e v_e (population standard deviation): 0 is perfect balance.
  static double coefficient_of_variation(const std::vector<int64_t>& v) {
    if (v.empty()) return 0.0;
    double mean = 0, var = 0;
    for (auto t : v) mean += double(t);
    mean /= double(v.size());
    for (auto t : v) var += (double(t) - mean) * (double(t) - mean);
    return mean > 0 ? std::sqrt(var / double(v.size())) / mean : 0.0;
  }

  // " | aux 0.0101 | load 1.42 (routed 1.61) | drop 0.8%" (empty for dense models).
  std::string summary() const {
    if (layers_.empty()) return "";
    auto f = fields();
    char buf[96];
    std::snprintf(buf, sizeof buf, " | aux %.4f | load %.2f (routed %.2f) | drop %.1f%%", f[0].second, f[1].second,
                  f[3].second, 100.0 * f[2].second);
    return buf;
  }

 private:
  struct Layer {
    double aux = 0, z = 0, seq = 0;
    int64_t dropped = 0, assignments = 0;
    std::vector<int64_t> tokens, routed;
    float bias_min = 0, bias_max = 0;
  };
  std::map<int, Layer> layers_;
  double aux_total_ = 0;
  int micro_ = 0;
};

}  // namespace scmoe
