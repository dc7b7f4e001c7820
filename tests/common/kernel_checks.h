// What the kernel tests share: reproducible random inputs, error measures, central finite
// differences and a thread-count switch.
#pragma once
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/philox.h"

namespace lossytp::testing {

using VecF = std::vector<float>;
using VecD = std::vector<double>;

// n normal draws times scale, a pure function of (seed, stream, index).
inline VecF randn(size_t n, uint64_t stream, float scale = 1.0f, uint64_t seed = 12345) {
  VecF x(n);
  for (size_t i = 0; i < n; ++i) x[i] = scale * lossytp::philox_normal(seed, stream, i);
  return x;
}

inline VecD to_d(const VecF& x) { return VecD(x.begin(), x.end()); }

// max|a - b| / max|b| (b is the reference); 0 when both are 0; infinity when a has a NaN or
// an infinity (which max() would otherwise skip).
template <class A, class B>
double rel_err(const A& a, const B& b) {
  REQUIRE(a.size() == b.size());
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(static_cast<double>(a[i]))) return INFINITY;
    num = std::max(num, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    den = std::max(den, std::abs(static_cast<double>(b[i])));
  }
  return den > 0.0 ? num / den : num;
}

// Central differences of a double function of x, for the indices in idx (all when empty).
inline VecD fd_grad(VecD x, const std::function<double(const VecD&)>& f, double h,
                    const std::vector<size_t>& idx = {}) {
  VecD g(x.size(), 0.0);
  auto one = [&](size_t i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double fp = f(x);
    x[i] = x0 - h;
    const double fm = f(x);
    x[i] = x0;
    g[i] = (fp - fm) / (2.0 * h);
  };
  if (idx.empty())
    for (size_t i = 0; i < x.size(); ++i) one(i);
  else
    for (size_t i : idx) one(i);
  return g;
}

template <class A, class B>
double dot(const A& a, const B& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return s;
}

inline bool same_bits(const VecF& a, const VecF& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Runs f with n CPU kernel threads, then restores the count.
template <class F>
void with_threads(int n, F&& f) {
  const int old = lossytp::cpu::num_threads();
  lossytp::cpu::set_num_threads(n);
  f();
  lossytp::cpu::set_num_threads(old);
}

}  // namespace lossytp::testing
