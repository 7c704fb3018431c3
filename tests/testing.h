// A tiny assertion harness for the ctest executables: each CHECK counts, main returns non-zero if any failed.
#pragma once
#include <cmath>
#include <cstdio>
#include <exception>
#include <string>

namespace testing_ {
inline int& failures() {
  static int f = 0;
  return f;
}
inline int& checks() {
  static int c = 0;
  return c;
}
}  // namespace testing_

#define CHECK(cond)                                                              \
  do {                                                                           \
    ++testing_::checks();                                                        \
    if (!(cond)) {                                                               \
      ++testing_::failures();                                                    \
      std::fprintf(stderr, "CHECK failed: %s  (%s:%d)\n", #cond, __FILE__, __LINE__); \
    }                                                                            \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                              \
  do {                                                                                     \
    ++testing_::checks();                                                                  \
    double a_ = (a), b_ = (b);                                                             \
    if (!(std::fabs(a_ - b_) <= (tol))) {                                                  \
      ++testing_::failures();                                                              \
      std::fprintf(stderr, "CHECK_NEAR failed: %s=%.10g vs %s=%.10g (tol %.3g) (%s:%d)\n", #a, a_, #b, \
                   b_, (double)(tol), __FILE__, __LINE__);                                 \
    }                                                                                      \
  } while (0)

// Expects `expr` to throw an exception whose what() contains `needle` (a C string or std::string).
#define CHECK_THROWS_WITH(expr, needle)                                                         \
  do {                                                                                          \
    ++testing_::checks();                                                                       \
    bool threw_ = false;                                                                        \
    try {                                                                                       \
      expr;                                                                                     \
    } catch (const std::exception& e_) {                                                        \
      threw_ = true;                                                                            \
      const std::string needle_(needle);                                                        \
      if (std::string(e_.what()).find(needle_) == std::string::npos) {                          \
        ++testing_::failures();                                                                 \
        std::fprintf(stderr, "wrong error for %s: '%s' lacks '%s' (%s:%d)\n", #expr, e_.what(), \
                     needle_.c_str(), __FILE__, __LINE__);                                      \
      }                                                                                         \
    }                                                                                           \
    if (!threw_) {                                                                              \
      ++testing_::failures();                                                                   \
      std::fprintf(stderr, "expected %s to throw (%s:%d)\n", #expr, __FILE__, __LINE__);        \
    }                                                                                           \
  } while (0)

#define TEST_MAIN_END()                                                                  \
  std::printf("%d checks, %d failures\n", testing_::checks(), testing_::failures());     \
  return testing_::failures() == 0 && testing_::checks() > 0 ? 0 : 1
