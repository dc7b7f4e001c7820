// The --bf16 attention on the CPU (attention_forward_bf16 / attention_backward_bf16,
// kernels/cpu/attention_bf16.cpp): the fp32 fused attention on bf16-rounded q, k, v and dout.
// Also a naive double-precision model of the GPU's bf16 attention (kernels/cuda/attention.cu,
// which additionally rounds P and dS), to show the CPU emulation is within the tolerance the GPU
// test (tests/gpu/test_cuda_attention_bf16.cpp) allows.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>
#include <tuple>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/cpu/ops.h"
#include "kernels/philox.h"

namespace cpu = lossytp::cpu;
using lossytp::bf16_round;

namespace {

using Vec = std::vector<float>;

Vec randn(size_t n, uint64_t stream, float scale = 1.0f) {
  Vec x(n);
  for (size_t i = 0; i < n; ++i) x[i] = scale * lossytp::philox_normal(4711, stream, i);
  return x;
}

Vec rounded(const Vec& x) {
  Vec r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = bf16_round(x[i]);
  return r;
}

bool same_bits(const Vec& a, const Vec& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// max|a - b| / max|b|
double rel_err(const Vec& a, const Vec& b) {
  REQUIRE(a.size() == b.size());
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num = std::max(num, std::abs(double(a[i]) - double(b[i])));
    den = std::max(den, std::abs(double(b[i])));
  }
  return den > 0.0 ? num / den : num;
}

struct Shape {
  int B, T, NH, HD;
  size_t nqkv() const { return size_t(B) * T * NH * 3 * HD; }
  size_t nout() const { return size_t(B) * T * NH * HD; }
  size_t nlse() const { return size_t(B) * NH * T; }
};

struct Result {
  Vec out, lse, dqkv;
};

Result run(bool bf16, const Vec& qkv, const Vec& dout, const Shape& s) {
  Result r{Vec(s.nout()), Vec(s.nlse()), Vec(s.nqkv(), NAN)};
  if (bf16) {
    cpu::attention_forward_bf16(r.out.data(), r.lse.data(), qkv.data(), s.B, s.T, s.NH, s.NH,
                                s.HD);
    cpu::attention_backward_bf16(r.dqkv.data(), dout.data(), qkv.data(), r.out.data(), r.lse.data(),
                                 s.B, s.T, s.NH, s.NH, s.HD);
  } else {
    cpu::attention_forward(r.out.data(), r.lse.data(), qkv.data(), s.B, s.T, s.NH, s.NH,
                           s.HD);
    cpu::attention_backward(r.dqkv.data(), dout.data(), qkv.data(), r.out.data(), r.lse.data(), s.B,
                            s.T, s.NH, s.NH, s.HD);
  }
  return r;
}

// The GPU's bf16 attention in double: q, k, v, dout rounded; P rounded before O = P V and
// dV = P^T dO; dS rounded before dQ = scale dS K and dK = scale dS^T Q; D = dO_r . O.
Result gpu_model(const Vec& qkv_in, const Vec& dout_in, const Shape& s) {
  const Vec qkv = rounded(qkv_in), dout = rounded(dout_in);
  const int T = s.T, NH = s.NH, HD = s.HD;
  const double scale = 1.0 / std::sqrt(double(HD));
  Result r{Vec(s.nout()), Vec(s.nlse()), Vec(s.nqkv())};
  auto q = [&](int b, int t, int h, int w, int c) -> double {
    return qkv[(((size_t(b) * T + t) * NH + h) * 3 + w) * HD + c];
  };
  auto bfr = [](double x) { return double(bf16_round(float(x))); };
  std::vector<double> P(T), Pr(T), dS(T);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < NH; ++h) {
      std::vector<double> dq(size_t(T) * HD, 0.0), dk(size_t(T) * HD, 0.0), dv(size_t(T) * HD, 0.0);
      for (int t = 0; t < T; ++t) {
        double m = -INFINITY;
        for (int k = 0; k <= t; ++k) {
          double x = 0;
          for (int c = 0; c < HD; ++c) x += q(b, t, h, 0, c) * q(b, k, h, 1, c);
          P[k] = x * scale;
          m = std::max(m, P[k]);
        }
        double l = 0;
        for (int k = 0; k <= t; ++k) l += std::exp(P[k] - m);
        for (int k = 0; k <= t; ++k) {
          P[k] = std::exp(P[k] - m) / l;
          Pr[k] = bfr(P[k]);
        }
        r.lse[(size_t(b) * NH + h) * T + t] = float(m + std::log(l));
        const size_t o = ((size_t(b) * T + t) * NH + h) * HD;
        for (int c = 0; c < HD; ++c) {
          double x = 0;
          for (int k = 0; k <= t; ++k) x += Pr[k] * q(b, k, h, 2, c);
          r.out[o + c] = float(x);
        }
        double D = 0;
        for (int c = 0; c < HD; ++c) D += double(dout[o + c]) * r.out[o + c];
        for (int k = 0; k <= t; ++k) {
          double dp = 0;
          for (int c = 0; c < HD; ++c) dp += dout[o + c] * q(b, k, h, 2, c);
          dS[k] = bfr(P[k] * (dp - D));
        }
        for (int k = 0; k <= t; ++k)
          for (int c = 0; c < HD; ++c) {
            dv[size_t(k) * HD + c] += Pr[k] * dout[o + c];
            dq[size_t(t) * HD + c] += scale * dS[k] * q(b, k, h, 1, c);
            dk[size_t(k) * HD + c] += scale * dS[k] * q(b, t, h, 0, c);
          }
      }
      for (int t = 0; t < T; ++t)
        for (int c = 0; c < HD; ++c) {
          const size_t base = ((size_t(b) * T + t) * NH + h) * 3 * HD + c;
          r.dqkv[base] = float(dq[size_t(t) * HD + c]);
          r.dqkv[base + HD] = float(dk[size_t(t) * HD + c]);
          r.dqkv[base + 2 * HD] = float(dv[size_t(t) * HD + c]);
        }
    }
  return r;
}

const std::vector<Shape> kShapes = {{1, 1, 1, 8},  {2, 37, 3, 16}, {1, 64, 2, 64},
                                    {3, 129, 2, 64}, {1, 200, 1, 8}, {1, 33, 2, 24}};

}  // namespace

TEST_CASE("bf16 attention is the fp32 attention on rounded q, k, v, dout (bit for bit)", "[bf16]") {
  for (const Shape& s : kShapes) {
    INFO("B " << s.B << " T " << s.T << " NH " << s.NH << " HD " << s.HD);
    const Vec qkv = randn(s.nqkv(), 1 + s.T), dout = randn(s.nout(), 2 + s.T);
    const Result b = run(true, qkv, dout, s);
    const Result f = run(false, rounded(qkv), rounded(dout), s);
    CHECK(same_bits(b.out, f.out));
    CHECK(same_bits(b.lse, f.lse));
    CHECK(same_bits(b.dqkv, f.dqkv));
  }
}

TEST_CASE("bf16 attention is close to fp32 attention, and not equal to it", "[bf16]") {
  for (const Shape& s : kShapes) {
    INFO("B " << s.B << " T " << s.T << " NH " << s.NH << " HD " << s.HD);
    const Vec qkv = randn(s.nqkv(), 11 + s.T), dout = randn(s.nout(), 12 + s.T);
    const Result b = run(true, qkv, dout, s);
    const Result f = run(false, qkv, dout, s);
    CHECK(rel_err(b.out, f.out) < 1e-2);
    CHECK(rel_err(b.lse, f.lse) < 1e-2);
    CHECK(rel_err(b.dqkv, f.dqkv) < 1e-2);
    if (s.T > 1) CHECK(rel_err(b.dqkv, f.dqkv) > 1e-6);
  }
}

TEST_CASE("bf16 attention on the CPU is within the GPU test's tolerance of the GPU's rounding", "[bf16]") {
  // The GPU also rounds P and dS; tests/gpu/test_cuda_attention_bf16.cpp allows 2e-2 of the
  // largest magnitude between the GPU and this emulation. The model here rounds like the GPU.
  for (const Shape& s : {Shape{1, 1, 1, 8}, Shape{2, 37, 3, 16}, Shape{1, 96, 2, 64}, Shape{2, 50, 1, 8}}) {
    INFO("B " << s.B << " T " << s.T << " NH " << s.NH << " HD " << s.HD);
    const Vec qkv = randn(s.nqkv(), 21 + s.T), dout = randn(s.nout(), 22 + s.T);
    const Result b = run(true, qkv, dout, s);
    const Result g = gpu_model(qkv, dout, s);
    CHECK(rel_err(b.out, g.out) < 2e-2);
    CHECK(rel_err(b.lse, g.lse) < 1e-5);
    CHECK(rel_err(b.dqkv, g.dqkv) < 2e-2);
  }
}

TEST_CASE("bf16 attention: scratch reuse across shapes and threads", "[bf16]") {
  // smaller after larger (scratch reused), then several threads with their own scratch
  const std::vector<Shape> shapes = {{2, 100, 2, 32}, {1, 10, 1, 16}, {2, 101, 2, 32}};
  std::vector<Vec> qkv, dout;
  std::vector<Result> want;
  for (size_t i = 0; i < shapes.size(); ++i) {
    qkv.push_back(randn(shapes[i].nqkv(), 31 + i));
    dout.push_back(randn(shapes[i].nout(), 41 + i));
    want.push_back(run(false, rounded(qkv[i]), rounded(dout[i]), shapes[i]));
  }
  for (size_t i = 0; i < shapes.size(); ++i) {
    const Result r = run(true, qkv[i], dout[i], shapes[i]);
    CHECK(same_bits(r.out, want[i].out));
    CHECK(same_bits(r.dqkv, want[i].dqkv));
  }
  std::vector<Result> got(shapes.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < shapes.size(); ++i)
    threads.emplace_back([&, i] {
      for (int rep = 0; rep < 2; ++rep) got[i] = run(true, qkv[i], dout[i], shapes[i]);
    });
  for (auto& th : threads) th.join();
  for (size_t i = 0; i < shapes.size(); ++i) {
    INFO("thread " << i);
    CHECK(same_bits(got[i].out, want[i].out));
    CHECK(same_bits(got[i].lse, want[i].lse));
    CHECK(same_bits(got[i].dqkv, want[i].dqkv));
  }
}
