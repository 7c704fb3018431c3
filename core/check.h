// Error type and check macros: every failure carries file:line, the call that failed and a hint.
#pragma once
#include <cerrno>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>

namespace scmoe {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void fail_at(const char* file, int line, const std::string& msg) {
  std::ostringstream os;
  os << msg << " [" << file << ":" << line << "]";
  throw Error(os.str());
}

}  // namespace scmoe

// SCMOE_CHECK(cond, msg-stream-expression): throws scmoe::Error with the message and location.
#define SCMOE_CHECK(cond, msg)                              \
  do {                                                      \
    if (!(cond)) {                                          \
      std::ostringstream scmoe_os_;                         \
      scmoe_os_ << msg;                                     \
      ::scmoe::fail_at(__FILE__, __LINE__, scmoe_os_.str()); \
    }                                                       \
  } while (0)

#define SCMOE_FAIL(msg) SCMOE_CHECK(false, msg)

// File I/O: names the path, the operation and errno's text.
#define SCMOE_CHECK_IO(cond, path, what) \
  SCMOE_CHECK(cond, what << " '" << (path) << "': " << std::strerror(errno))
