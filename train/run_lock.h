// One run per train.out_dir: rank 0 holds an advisory lock (flock) on <out_dir>/.lock for the whole run.
// Two runs writing the same checkpoints directory would delete each other's temporary directories; the
// second now stops at once, naming the first. The kernel drops a flock when its process dies, so a
// lock left by a killed run is free: the file still names that run, and taking it over says so.
#pragma once
#include <string>

namespace scmoe {

class RunLock {
 public:
  // Creates out_dir if needed and locks it, or throws scmoe::Error naming the run that holds it.
  // `notice` receives a line when a dead run's lock was taken over (empty otherwise).
  RunLock(const std::string& out_dir, std::string* notice);
  ~RunLock();  // empties the file (a clean exit leaves no owner to report) and releases the lock
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace scmoe
