// train.out_dir's lock (train/run_lock.h): one run at a time, a dead run's lock taken over with a
// notice, the holder named to the run that is refused.
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "core/check.h"
#include "tests/testing.h"
#include "train/run_lock.h"

namespace fs = std::filesystem;

namespace {

std::string read_text(const std::string& p) {
  std::ifstream in(p);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void test_lock_refuse_release(const fs::path& root) {
  const std::string dir = (root / "run_a").string();  // created by the lock
  std::string notice = "unset";
  auto lock = std::make_unique<scmoe::RunLock>(dir, &notice);
  CHECK(notice.empty());
  CHECK(fs::exists(dir + "/.lock"));
  const std::string owner = read_text(dir + "/.lock");
  CHECK(owner.find("pid " + std::to_string(::getpid())) == 0);
  // flock belongs to the open file, so a second lock in this process is refused like another run's.
  CHECK_THROWS_WITH(
      scmoe::RunLock(dir, nullptr),
      ("train.out_dir '" + dir + "' is in use by another run (pid " + std::to_string(::getpid())).c_str());
  lock.reset();
  CHECK(read_text(dir + "/.lock").empty());  // a clean exit leaves no owner
  scmoe::RunLock again(dir, &notice);
  CHECK(notice.empty());  // nothing to take over after a clean exit
}

void test_stale_lock_taken_over(const fs::path& root) {
  const std::string dir = (root / "run_b").string();
  fs::create_directories(dir);
  std::ofstream(dir + "/.lock") << "pid 4242 on host elsewhere, started 2026-01-01 00:00:00 UTC\n";
  std::string notice;
  scmoe::RunLock lock(dir, &notice);
  CHECK(notice.find("took over the lock " + dir +
                    "/.lock of a run that is no longer running (pid 4242 on host "
                    "elsewhere") == 0);
  CHECK(read_text(dir + "/.lock").find("pid " + std::to_string(::getpid())) == 0);
}

void test_held_by_another_process(const fs::path& root) {
  // A child process holds the lock: the refusal names it, and once it is gone the lock is free again.
  const std::string dir = (root / "run_c").string();
  int ready[2], done[2];
  CHECK(::pipe(ready) == 0 && ::pipe(done) == 0);
  const pid_t child = ::fork();
  if (child == 0) {
    scmoe::RunLock lock(dir, nullptr);
    char c = 1;
    (void)!::write(ready[1], &c, 1);
    (void)!::read(done[0], &c, 1);
    ::_exit(0);  // no destructor: the file still names this pid, as after a crash
  }
  char c;
  CHECK(::read(ready[0], &c, 1) == 1);
  CHECK_THROWS_WITH(scmoe::RunLock(dir, nullptr), ("pid " + std::to_string(child)).c_str());
  (void)!::write(done[1], &c, 1);
  int status = 0;
  ::waitpid(child, &status, 0);
  std::string notice;
  scmoe::RunLock lock(dir, &notice);
  CHECK(notice.find("pid " + std::to_string(child)) != std::string::npos);
}

void test_unusable_dir(const fs::path& root) {
  const std::string file = (root / "a_file").string();
  std::ofstream(file) << "x";
  CHECK_THROWS_WITH(scmoe::RunLock(file + "/sub", nullptr), "train.out_dir '");
}

}  // namespace

int main() {
  const fs::path root = fs::temp_directory_path() / ("scmoe_test_run_lock_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  try {
    test_lock_refuse_release(root);
    test_stale_lock_taken_over(root);
    test_held_by_another_process(root);
    test_unusable_dir(root);
  } catch (const std::exception& e) {
    ++testing_::failures();
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
  }
  fs::remove_all(root);
  TEST_MAIN_END();
}
