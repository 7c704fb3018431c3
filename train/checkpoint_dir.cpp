// Checkpoint directory lifecycle: atomic commit via a temporary sibling + rename, keep-K pruning,
// crash-leftover cleanup and resolution of --resume.
#include "train/checkpoint_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <system_error>
#include <utility>

#include "core/check.h"

namespace scmoe {
namespace fs = std::filesystem;

namespace {

const char* const kComplete = "COMPLETE";
const char* const kTmpPrefix = ".tmp-";

void check_fs(const std::error_code& ec, const char* what, const fs::path& p) {
  SCMOE_CHECK(!ec, what << " '" << p.string() << "': " << ec.message());
}

// "step_" followed by 8 or more digits (at most 18, so the step fits an int64).
bool parse_step(const std::string& name, int64_t* step) {
  const std::string prefix = "step_";
  if (name.compare(0, prefix.size(), prefix) != 0) return false;
  const std::string digits = name.substr(prefix.size());
  if (digits.size() < 8 || digits.size() > 18) return false;
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
  *step = std::stoll(digits);
  return true;
}

bool has_marker(const fs::path& dir) {
  std::error_code ec;
  return fs::is_regular_file(dir / kComplete, ec);
}

// fsync a file or directory; EINVAL means the object cannot be synced, not that data was lost.
void fsync_path(const fs::path& p, bool is_dir) {
  int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC | (is_dir ? O_DIRECTORY : 0));
  SCMOE_CHECK_IO(fd >= 0, p.string(), "cannot open for fsync");
  int rc = ::fsync(fd);
  int saved = errno;
  ::close(fd);
  errno = saved;
  SCMOE_CHECK_IO(rc == 0 || errno == EINVAL, p.string(), "fsync");
}

// Writers other than safetensors_write may not fsync; syncing everything here makes COMPLETE honest.
void sync_tree(const fs::path& dir) {
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    fs::file_status st = it->symlink_status();
    if (fs::is_regular_file(st) || fs::is_directory(st)) fsync_path(it->path(), fs::is_directory(st));
  }
  check_fs(ec, "cannot walk checkpoint directory", dir);
  fsync_path(dir, true);
}

void write_marker(const fs::path& p) {
  int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  SCMOE_CHECK_IO(fd >= 0, p.string(), "cannot create");
  bool synced = ::fsync(fd) == 0;
  int saved = errno;
  bool closed = ::close(fd) == 0;
  if (!synced) errno = saved;
  SCMOE_CHECK_IO(synced, p.string(), "fsync");
  SCMOE_CHECK_IO(closed, p.string(), "close");
}

void remove_tree(const fs::path& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
  check_fs(ec, "cannot delete", p);
}

// Crash leftovers: temporary dirs of unfinished commits and set-aside replaced checkpoints. Only one
// process commits into a root at a time, so none of these can belong to a live writer.
void remove_stale_tmp(const fs::path& root) {
  std::vector<fs::path> stale;
  std::error_code ec;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec))
    if (it->path().filename().string().rfind(kTmpPrefix, 0) == 0) stale.push_back(it->path());
  check_fs(ec, "cannot list checkpoint root", root);
  for (const fs::path& p : stale) remove_tree(p);
}

// Keeps the newest `keep` by step, and always `just_written` (which can be older than leftovers of
// an abandoned longer run when training restarted from an earlier checkpoint).
void prune(const fs::path& root, int keep, const fs::path& just_written) {
  remove_stale_tmp(root);
  std::vector<std::string> all = list_checkpoints(root.string());
  size_t excess = all.size() > static_cast<size_t>(keep) ? all.size() - static_cast<size_t>(keep) : 0;
  for (size_t i = 0; i < excess; ++i)
    if (fs::path(all[i]) != just_written) remove_tree(all[i]);
}

}  // namespace

std::string checkpoint_name(int64_t step) {
  SCMOE_CHECK(step >= 0, "checkpoint step must be >= 0, got " << step);
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

std::string commit_checkpoint(const std::string& root, int64_t step, int keep,
                              const std::function<void(const std::string& tmpdir)>& write) {
  SCMOE_CHECK(keep >= 1, "checkpoint.keep must be >= 1, got " << keep);
  const fs::path rootp(root);
  const std::string name = checkpoint_name(step);
  const fs::path tmp = rootp / (kTmpPrefix + name);
  const fs::path final_dir = rootp / name;
  const fs::path aside = rootp / (kTmpPrefix + std::string("replaced-") + name);

  std::error_code ec;
  fs::create_directories(rootp, ec);
  check_fs(ec, "cannot create checkpoint root", rootp);
  remove_tree(tmp);  // a crashed earlier attempt at this step
  fs::create_directory(tmp, ec);
  check_fs(ec, "cannot create temporary checkpoint directory", tmp);

  bool moved_aside = false;
  try {
    write(tmp.string());
    sync_tree(tmp);
    write_marker(tmp / kComplete);  // last, so its presence implies everything above is on disk
    fsync_path(tmp, true);
    if (fs::exists(final_dir)) {
      remove_tree(aside);
      fs::rename(final_dir, aside, ec);
      check_fs(ec, "cannot move aside the existing checkpoint", final_dir);
      moved_aside = true;
    }
    fs::rename(tmp, final_dir, ec);
    check_fs(ec, "cannot rename the finished checkpoint into place", final_dir);
  } catch (...) {
    std::error_code ignore;  // best effort: the original error is the one to report
    fs::remove_all(tmp, ignore);
    if (moved_aside && !fs::exists(final_dir, ignore)) fs::rename(aside, final_dir, ignore);
    throw;
  }
  fsync_path(rootp, true);  // makes the rename itself durable
  if (moved_aside) remove_tree(aside);
  prune(rootp, keep, final_dir);
  return final_dir.string();
}

std::vector<std::string> list_checkpoints(const std::string& root) {
  std::error_code ec;
  if (!fs::exists(root, ec)) return {};
  std::vector<std::pair<int64_t, std::string>> found;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    int64_t step = 0;
    std::error_code dir_ec;
    if (parse_step(it->path().filename().string(), &step) && it->is_directory(dir_ec) &&
        has_marker(it->path()))
      found.emplace_back(step, it->path().string());
  }
  check_fs(ec, "cannot list checkpoint root", root);
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

std::string resolve_resume(const std::string& spec, const std::string& root) {
  if (spec.empty()) return "";
  if (spec == "auto") {
    std::vector<std::string> all = list_checkpoints(root);
    return all.empty() ? "" : all.back();
  }
  std::error_code ec;
  SCMOE_CHECK(fs::exists(spec, ec), "resume checkpoint '" << spec << "' does not exist");
  SCMOE_CHECK(fs::is_directory(spec, ec), "resume checkpoint '" << spec << "' is not a directory");
  SCMOE_CHECK(has_marker(spec), "resume checkpoint '" << spec << "' has no " << kComplete
                                                      << " marker (it was never finished; pick another)");
  return spec;
}

}  // namespace scmoe
