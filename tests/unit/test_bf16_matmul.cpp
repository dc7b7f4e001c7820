// bf16 rounding (kernels/bf16.h) and the bf16-operand linear layer on the CPU
// (matmul_forward_bf16 / matmul_backward_bf16, kernels/cpu/matmul_bf16.cpp).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/cpu/ops.h"
#include "kernels/philox.h"

#if defined(LOSSYTP_HAVE_CUDA) && __has_include(<cuda_bf16.h>)
#include <cuda_bf16.h>
#define LOSSYTP_TEST_CUDA_BF16 1
#endif

namespace cpu = lossytp::cpu;
using lossytp::bf16_bits;
using lossytp::bf16_round;

namespace {

float from_bits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

uint32_t to_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

std::vector<float> randn(size_t n, uint64_t stream, float scale = 1.0f) {
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = scale * lossytp::philox_normal(777, stream, i);
  return x;
}

std::vector<float> rounded(const std::vector<float>& x) {
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = bf16_round(x[i]);
  return r;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// max|a - b| / max|b|
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num = std::max(num, std::abs(double(a[i]) - double(b[i])));
    den = std::max(den, std::abs(double(b[i])));
  }
  return den > 0.0 ? num / den : num;
}

}  // namespace

TEST_CASE("bf16 rounding: known values, ties to even, signs, overflow, NaN", "[bf16]") {
  const float u = std::ldexp(1.0f, -7);  // one bf16 ulp at 1
  CHECK(bf16_bits(1.0f) == 0x3F80);
  CHECK(bf16_round(1.0f) == 1.0f);
  CHECK(bf16_round(0.0f) == 0.0f);
  CHECK(std::signbit(bf16_round(-0.0f)));
  CHECK(bf16_round(1.0f + u) == 1.0f + u);                              // representable
  CHECK(bf16_round(1.0f + std::ldexp(1.0f, -9)) == 1.0f);              // below half: down
  CHECK(bf16_round(1.0f + std::ldexp(1.0f, -8)) == 1.0f);              // tie, 1.0 is even: down
  CHECK(bf16_round(1.0f + 3 * std::ldexp(1.0f, -8)) == 1.0f + 2 * u);  // tie, 1+u is odd: up
  CHECK(bf16_round(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)) == 1.0f + u);  // above half
  CHECK(bf16_round(-(1.0f + 3 * std::ldexp(1.0f, -8))) == -(1.0f + 2 * u));  // symmetric
  CHECK(bf16_round(-1.0f - std::ldexp(1.0f, -8)) == -1.0f);
  CHECK(bf16_round(3.14159265f) == 3.140625f);                    // 0x40490FDB -> 0x4049
  CHECK(bf16_round(1e30f) == from_bits(0x714A0000u));  // 0x7149F2CA rounds up
  CHECK(bf16_round(from_bits(0x7F7F0000u)) == from_bits(0x7F7F0000u));  // largest finite bf16
  CHECK(bf16_round(std::numeric_limits<float>::max()) == std::numeric_limits<float>::infinity());
  CHECK(bf16_round(-std::numeric_limits<float>::max()) == -std::numeric_limits<float>::infinity());
  CHECK(bf16_round(std::numeric_limits<float>::infinity()) == std::numeric_limits<float>::infinity());
  CHECK(bf16_round(from_bits(0x00012345u)) == from_bits(0x00010000u));  // subnormal
  CHECK(bf16_round(from_bits(0x00018000u)) == from_bits(0x00020000u));  // subnormal tie, odd: up
  CHECK(std::isnan(bf16_round(std::numeric_limits<float>::quiet_NaN())));
  CHECK(std::isnan(bf16_round(from_bits(0x7F800001u))));  // signalling NaN that would round to inf
  CHECK(std::isnan(bf16_round(from_bits(0xFFFFFFFFu))));
  CHECK(bf16_bits(std::numeric_limits<float>::quiet_NaN()) == 0x7FFF);
  // the result is always a bf16 (low 16 bits 0), within half an ulp, and idempotent
  for (uint32_t i = 0; i < 100000; ++i) {
    const uint32_t bits = i * 0x9E3779B9u;
    const float x = from_bits(bits);
    if (!std::isfinite(x)) continue;
    const float r = bf16_round(x);
    REQUIRE((to_bits(r) & 0xFFFFu) == 0u);
    REQUIRE(bf16_round(r) == r);
    if (std::isnormal(x) && std::isfinite(r))
      REQUIRE(std::abs(double(r) - double(x)) <= std::ldexp(std::abs(double(x)), -8));
  }
}

#ifdef LOSSYTP_TEST_CUDA_BF16
TEST_CASE("bf16 rounding equals CUDA's __float2bfloat16_rn (host path)", "[bf16]") {
  auto check = [](uint32_t bits) {
    const float x = from_bits(bits);
    const uint16_t want = __bfloat16_as_ushort(__float2bfloat16_rn(x));
    if (bf16_bits(x) != want) {
      INFO("bits 0x" << std::hex << bits);
      REQUIRE(bf16_bits(x) == want);
    }
  };
  for (uint32_t hi = 0; hi < 0x10000u; ++hi)
    for (uint32_t lo : {0x0000u, 0x0001u, 0x7FFFu, 0x8000u, 0x8001u, 0xFFFFu}) check(hi << 16 | lo);
  for (uint32_t i = 0; i < (1u << 20); ++i) check(i * 0x9E3779B9u);
}
#endif

TEST_CASE("matmul_forward_bf16 is matmul_forward on rounded operands, close to fp32", "[bf16]") {
  for (const auto& [N, C, OC] : {std::tuple{1, 1, 1}, std::tuple{7, 13, 5}, std::tuple{67, 48, 80},
                                 std::tuple{130, 257, 96}}) {
    INFO("N " << N << " C " << C << " OC " << OC);
    const auto x = randn(size_t(N) * C, 1), w = randn(size_t(OC) * C, 2, 0.1f), b = randn(OC, 3);
    std::vector<float> y(size_t(N) * OC), want(size_t(N) * OC), y32(size_t(N) * OC);
    cpu::matmul_forward_bf16(y.data(), x.data(), w.data(), b.data(), N, C, OC);
    const auto xr = rounded(x), wr = rounded(w);
    cpu::matmul_forward(want.data(), xr.data(), wr.data(), b.data(), N, C, OC);
    CHECK(same_bits(y, want));
    cpu::matmul_forward(y32.data(), x.data(), w.data(), b.data(), N, C, OC);
    CHECK(rel_err(y, y32) < 1e-2);
    if (C >= 13) CHECK(rel_err(y, y32) > 1e-5);  // it did round
    // without a bias
    cpu::matmul_forward_bf16(y.data(), x.data(), w.data(), nullptr, N, C, OC);
    cpu::matmul_forward(want.data(), xr.data(), wr.data(), nullptr, N, C, OC);
    CHECK(same_bits(y, want));
  }
}

TEST_CASE("matmul_backward_bf16 is matmul_backward on rounded operands, close to fp32", "[bf16]") {
  for (const auto& [N, C, OC] : {std::tuple{1, 1, 1}, std::tuple{7, 13, 5}, std::tuple{67, 48, 80},
                                 std::tuple{130, 257, 96}}) {
    INFO("N " << N << " C " << C << " OC " << OC);
    const size_t nx = size_t(N) * C, nw = size_t(OC) * C, ny = size_t(N) * OC;
    const auto x = randn(nx, 4), w = randn(nw, 5, 0.1f), dy = randn(ny, 6);
    const auto xr = rounded(x), wr = rounded(w), dyr = rounded(dy);
    // dinp overwritten (start from NaN), dweight and dbias accumulate onto 0.5 and 0.25
    std::vector<float> dx(nx, NAN), dw(nw, 0.5f), db(OC, 0.25f);
    cpu::matmul_backward_bf16(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), N, C, OC);
    std::vector<float> dx_want(nx), dw_want(nw, 0.5f), db_want(OC, 0.25f);
    cpu::matmul_backward(dx_want.data(), dw_want.data(), nullptr, dyr.data(), xr.data(), wr.data(), N, C, OC);
    // dbias is the fp32 column sum of the unrounded dout
    std::vector<float> dx32(nx), dw32(nw, 0.5f), db32(OC, 0.25f);
    cpu::matmul_backward(dx32.data(), dw32.data(), db32.data(), dy.data(), x.data(), w.data(), N, C, OC);
    CHECK(same_bits(dx, dx_want));
    CHECK(same_bits(dw, dw_want));
    CHECK(same_bits(db, db32));
    CHECK(rel_err(dx, dx32) < 1e-2);
    CHECK(rel_err(dw, dw32) < 1e-2);
    if (OC >= 5 && C >= 13) CHECK(rel_err(dx, dx32) > 1e-5);

    // nullptr skips dinp, dweight, dbias
    std::vector<float> dw2(nw, 0.5f);
    cpu::matmul_backward_bf16(nullptr, dw2.data(), nullptr, dy.data(), x.data(), w.data(), N, C, OC);
    CHECK(same_bits(dw2, dw_want));
    std::vector<float> dx2(nx, NAN);
    cpu::matmul_backward_bf16(dx2.data(), nullptr, nullptr, dy.data(), x.data(), w.data(), N, C, OC);
    CHECK(same_bits(dx2, dx_want));
  }
}

TEST_CASE("bf16 matmul: NaN and infinity in an operand propagate", "[bf16]") {
  const int N = 3, C = 4, OC = 2;
  auto x = randn(N * C, 7), w = randn(OC * C, 8);
  x[5] = NAN;  // row 1
  std::vector<float> y(N * OC);
  cpu::matmul_forward_bf16(y.data(), x.data(), w.data(), nullptr, N, C, OC);
  CHECK(std::isfinite(y[0]));
  CHECK(std::isnan(y[1 * OC + 0]));
  CHECK(std::isnan(y[1 * OC + 1]));
  CHECK(std::isfinite(y[2 * OC + 1]));
}
