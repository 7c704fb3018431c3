// The parameter table: every tensor's name (as in model.safetensors), shape, offset into the one
// contiguous parameter buffer, whether weight decay applies and how it is initialised.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/check.h"

namespace scmoe {

enum class Init { normal, zeros, ones };

struct ParamSpec {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0;
  size_t numel = 0;
  bool decay = true;    // false for norms and biases
  Init init = Init::normal;
  double std = 0.02;    // for Init::normal
  bool expert = false;  // a routed expert's tensor: lives on one rank under expert parallelism
};

class ParamTable {
 public:
  // Returns the offset of the new tensor in the parameter buffer.
  size_t add(const std::string& name, std::vector<int64_t> shape, bool decay, Init init, double std = 0.02) {
    for (const auto& p : specs_) SCMOE_CHECK(p.name != name, "duplicate parameter name " << name);
    ParamSpec s;
    s.name = name;
    s.numel = 1;
    for (int64_t d : shape) s.numel *= size_t(d);
    s.shape = std::move(shape);
    s.offset = total_;
    s.decay = decay;
    s.init = init;
    s.std = std;
    s.expert = name.find(".experts.") != std::string::npos;
    total_ += (s.numel + 15) / 16 * 16;  // keep every tensor 64-byte aligned for vector loads
    specs_.push_back(std::move(s));
    return specs_.back().offset;
  }
  const std::vector<ParamSpec>& specs() const { return specs_; }
  size_t total() const { return total_; }
  // Contiguous [begin, end) ranges of the buffer holding replicated (non-expert) tensors: what data
  // parallelism all-reduces.
  std::vector<std::pair<size_t, size_t>> replicated_ranges() const {
    std::vector<std::pair<size_t, size_t>> r;
    for (size_t i = 0; i < specs_.size(); i++) {
      if (specs_[i].expert) continue;
      size_t end = i + 1 < specs_.size() ? specs_[i + 1].offset : total_;
      if (!r.empty() && r.back().second == specs_[i].offset) r.back().second = end;
      else r.push_back({specs_[i].offset, end});
    }
    return r;
  }
  size_t count() const {
    size_t n = 0;
    for (const auto& s : specs_) n += s.numel;
    return n;
  }

 private:
  std::vector<ParamSpec> specs_;
  size_t total_ = 0;
};

}  // namespace scmoe
