// metrics.jsonl writer (see metrics.h).
#include "train/metrics.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "core/check.h"

namespace scmoe {

namespace {
// Reads the "step" of a line written by this class ("{"step":N,...").
int64_t line_step(const std::string& line) {
  auto p = line.find("\"step\":");
  return p == std::string::npos ? -1 : std::atoll(line.c_str() + p + 7);
}
}  // namespace

MetricsWriter::MetricsWriter(const std::string& path, bool enabled, int64_t resume_step) : path_(path) {
  if (!enabled) return;
  std::vector<std::string> keep;
  if (resume_step >= 0) {
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);)
      if (!line.empty() && line_step(line) <= resume_step) keep.push_back(line);
  }
  f_ = std::fopen(path.c_str(), resume_step >= 0 ? "w" : "a");
  SCMOE_CHECK_IO(f_, path, "cannot open metrics file");
  for (const auto& l : keep) std::fprintf(f_, "%s\n", l.c_str());
  std::fflush(f_);
}

MetricsWriter::~MetricsWriter() {
  if (f_) std::fclose(f_);
}

void MetricsWriter::write(int64_t step, const std::vector<std::pair<std::string, double>>& fields) {
  if (!f_) return;
  std::ostringstream os;
  os << "{\"step\":" << step;
  char buf[64];
  for (const auto& [k, v] : fields) {
    if (std::isfinite(v)) std::snprintf(buf, sizeof buf, "%.9g", v);
    else std::snprintf(buf, sizeof buf, "null");  // JSON has no NaN/Inf
    os << ",\"" << k << "\":" << buf;
  }
  os << "}\n";
  std::string s = os.str();
  SCMOE_CHECK_IO(std::fwrite(s.data(), 1, s.size(), f_) == s.size() && std::fflush(f_) == 0, path_,
                 "cannot append to metrics file");
}

}  // namespace scmoe
