// Minimal logging: info to stdout (the step lines), notices and warnings to stderr, rank-aware.
#pragma once
#include <cstdio>
#include <string>

namespace scmoe {

inline int& log_rank() {
  static int r = 0;
  return r;
}

// Only rank 0 prints info lines so multi-process output stays readable.
template <class... A>
void log_info(const char* fmt, A... a) {
  if (log_rank() != 0) return;
  std::printf(fmt, a...);
  std::printf("\n");
  std::fflush(stdout);
}

template <class... A>
void log_warn(const char* fmt, A... a) {
  std::fprintf(stderr, "warning: ");
  std::fprintf(stderr, fmt, a...);
  std::fprintf(stderr, "\n");
}

}  // namespace scmoe
