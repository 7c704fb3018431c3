#include "train/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "core/check.h"

namespace scmoe {
namespace {

std::string read_all(int fd) {
  std::string s;
  char buf[512];
  for (off_t at = 0;;) {
    const ssize_t n = ::pread(fd, buf, sizeof buf, at);
    if (n <= 0) break;
    s.append(buf, size_t(n));
    at += n;
    if (s.size() > 4096) break;  // an owner line is short; anything longer is not ours
  }
  while (!s.empty() && (s.back() == '\n' || s.back() == '\0')) s.pop_back();
  return s;
}

std::string owner_line() {
  char host[256] = "?";
  ::gethostname(host, sizeof host - 1);
  const std::time_t now = std::time(nullptr);
  char when[64];
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
  return "pid " + std::to_string(::getpid()) + " on host " + host + ", started " + when;
}

}  // namespace

RunLock::RunLock(const std::string& out_dir, std::string* notice) {
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  SCMOE_CHECK(!ec, "train.out_dir '" << out_dir << "': cannot create it: " << ec.message());
  path_ = (std::filesystem::path(out_dir) / ".lock").string();
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  SCMOE_CHECK_IO(fd_ >= 0, path_, "cannot open the run's lock file");
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    const std::string owner = read_all(fd_);
    ::close(fd_);
    fd_ = -1;
    SCMOE_CHECK(err == EWOULDBLOCK, "cannot lock '" << path_ << "': " << std::strerror(err));
    SCMOE_FAIL("train.out_dir '" << out_dir << "' is in use by another run ("
                                 << (owner.empty() ? "owner unknown" : owner) << "; lock " << path_
                                 << "): wait for it to finish, or give this run another train.out_dir");
  }
  const std::string previous = read_all(fd_);
  if (notice)
    *notice = previous.empty()
                  ? ""
                  : "took over the lock " + path_ + " of a run that is no longer running (" + previous + ")";
  const std::string me = owner_line() + "\n";
  const bool written =
      ::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, me.data(), me.size(), 0) == ssize_t(me.size());
  SCMOE_CHECK_IO(written, path_, "cannot write the run's lock file");
}

RunLock::~RunLock() {
  if (fd_ < 0) return;
  // Emptied rather than removed: unlinking a locked file lets a third run lock a new one beside a
  // second that still waits on the old.
  if (::ftruncate(fd_, 0) != 0) { /* the lock itself still goes with the descriptor */
  }
  ::close(fd_);
}

}  // namespace scmoe
