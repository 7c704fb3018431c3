// Central finite differences in float64: compares an analytic gradient with (f(x+h) - f(x-h)) / 2h
// for every element of an input, where f is a scalar loss built by the caller.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <vector>

#include "core/rng.h"
#include "tests/testing.h"

inline std::vector<double> random_vec(size_t n, uint64_t seed, double scale = 1.0) {
  scmoe::Rng r(seed);
  std::vector<double> v(n);
  for (auto& x : v) x = r.normal() * scale;
  return v;
}

// Checks analytic[i] == d loss / d x[i] for all i; x is perturbed in place and restored.
// Tolerance is relative to the largest gradient magnitude (plus an absolute floor).
inline void check_gradient(const char* what, std::vector<double>& x, const std::vector<double>& analytic,
                           const std::function<double()>& loss, double h = 1e-5, double rtol = 1e-6) {
  double worst = 0, scale = 1e-8;
  for (double a : analytic) scale = std::max(scale, std::fabs(a));
  for (size_t i = 0; i < x.size(); i++) {
    double keep = x[i];
    x[i] = keep + h;
    double fp = loss();
    x[i] = keep - h;
    double fm = loss();
    x[i] = keep;
    double num = (fp - fm) / (2 * h);
    worst = std::max(worst, std::fabs(num - analytic[i]) / scale);
  }
  std::printf("  %-34s n=%-6zu max rel err %.2e\n", what, x.size(), worst);
  CHECK(worst < rtol);
}

inline double dot(const std::vector<double>& a, const double* b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
  return s;
}
