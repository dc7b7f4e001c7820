// What the semigroup attention tests (test_semigroup_attention.cpp, test_semigroup_esr.cpp) share:
// the fork's deterministic fill, a weighted sum for losses, and a parameter lookup by name.
#pragma once
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "models/param_store.h"

namespace lossytp::testing {

inline double dot(const std::vector<double>& a, const std::vector<double>& w) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * w[i];
  return s;
}

// The fork's deterministic fill: det(n, seed)[i] = sin(seed + 0.7 i + 0.001 i^2).
inline std::vector<float> det(size_t n, double seed, double scale = 1.0) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(scale * std::sin(seed + 0.7 * i + 0.001 * i * i));
  return v;
}

// Index of the parameter `name` in s (the test fails when there is none).
inline int param(ParamStore& s, const std::string& name) {
  for (size_t i = 0; i < s.specs().size(); ++i)
    if (s.specs()[i].name == name) return static_cast<int>(i);
  FAIL("no parameter " << name);
  return -1;
}

}  // namespace lossytp::testing
