// A Chrome trace-event recorder (chrome://tracing, ui.perfetto.dev): complete events ("ph":"X") on one
// track per stream (tid 0 compute, tid 1 communication) and one process per rank, so a user can see
// the exchanges run under the backbone's work. Off unless a step is being traced; thread-safe.
#pragma once
#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#include "core/check.h"

namespace scmoe {

class Tracer {
 public:
  static Tracer& get() {
    static Tracer t;
    return t;
  }
  bool on() const { return on_; }
  void start() {
    std::lock_guard<std::mutex> g(m_);
    events_.clear();
    on_ = true;
  }
  static double now_us() {
    using namespace std::chrono;
    return duration<double, std::micro>(steady_clock::now().time_since_epoch()).count();
  }
  void add(const std::string& name, int tid, double begin_us, double end_us) {
    if (!on_) return;
    std::lock_guard<std::mutex> g(m_);
    events_.push_back({name, tid, begin_us, end_us - begin_us});
  }
  // Stops recording and writes the events of this rank (pid) to path.
  void write(const std::string& path, int pid) {
    std::lock_guard<std::mutex> g(m_);
    on_ = false;
    std::FILE* f = std::fopen(path.c_str(), "w");
    SCMOE_CHECK_IO(f, path, "cannot write trace");
    std::fprintf(f, "{\"traceEvents\":[\n");
    const char* tracks[] = {"compute stream", "communication stream"};
    for (int tid = 0; tid < 2; tid++)
      std::fprintf(f, "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,\"args\":{\"name\":\"%s\"}},\n", pid,
                   tid, tracks[tid]);
    std::fprintf(f, "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"args\":{\"name\":\"rank %d\"}}", pid, pid);
    for (const auto& e : events_)
      std::fprintf(f, ",\n{\"name\":\"%s\",\"ph\":\"X\",\"pid\":%d,\"tid\":%d,\"ts\":%.3f,\"dur\":%.3f}", e.name.c_str(),
                   pid, e.tid, e.ts, e.dur);
    std::fprintf(f, "\n]}\n");
    SCMOE_CHECK_IO(std::fclose(f) == 0, path, "cannot write trace");
  }

 private:
  struct Ev {
    std::string name;
    int tid;
    double ts, dur;
  };
  std::mutex m_;
  std::vector<Ev> events_;
  bool on_ = false;
};

}  // namespace scmoe
