// metrics.jsonl in the run directory: one JSON object per line, appended and flushed per record.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace scmoe {

class MetricsWriter {
 public:
  // Opens <out_dir>/metrics.jsonl. When resuming at `resume_step`, records of later steps (left by
  // a run that went on past its last checkpoint) are dropped so the file tells one consistent story.
  MetricsWriter(const std::string& path, bool enabled, int64_t resume_step);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  void write(int64_t step, const std::vector<std::pair<std::string, double>>& fields);

 private:
  std::FILE* f_ = nullptr;
  std::string path_;
};

}  // namespace scmoe
