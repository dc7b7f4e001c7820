// The cuBLAS attention (kernels/cuda/attention.cu, fp32 and bf16) and the bf16 linear layer
// (kernels/cuda/matmul_bf16.cu) against their CPU twins. Part of lossytp_gpu_tests (main() in
// test_cuda_kernels.cpp: exit 77, reported as skipped, without a GPU).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <thread>
#include <tuple>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"
#include "gpu/device_array.h"
#include "kernels/philox.h"

using namespace lossytp;
using testing::Dev;

namespace {

std::vector<float> gauss(size_t n, uint64_t stream, float scale = 1.0f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * philox_normal(4242, stream, i);
  return v;
}

// max |a - b| / (1 + |b|); infinity when a has a NaN
double rdiff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double w = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) != std::isnan(b[i])) return INFINITY;
    w = std::max(w, std::abs(double(a[i]) - b[i]) / (1 + std::abs(b[i])));
  }
  return w;
}

struct AttnResult {
  std::vector<float> out, lse, dqkv;
};

// NKV: key/value heads (GQA), 0 for NH (multi-head); qkv in the grouped layout, (NH + 2 NKV) HD
// floats a token.
AttnResult cpu_attention(const std::vector<float>& qkv, const std::vector<float>& dout, int B, int T,
                         int NH, int HD, int NKV = 0) {
  if (NKV == 0) NKV = NH;
  AttnResult r{std::vector<float>(dout.size()), std::vector<float>(size_t(B) * NH * T),
               std::vector<float>(qkv.size())};
  cpu::attention_forward(r.out.data(), r.lse.data(), qkv.data(), B, T, NH, NKV, HD);
  cpu::attention_backward(r.dqkv.data(), dout.data(), qkv.data(), r.out.data(), r.lse.data(), B, T,
                          NH, NKV, HD);
  return r;
}

// dqkv starts as NaN: it must be overwritten everywhere.
AttnResult gpu_attention(const std::vector<float>& qkv, const std::vector<float>& dout, int B, int T,
                         int NH, int HD, int NKV = 0) {
  if (NKV == 0) NKV = NH;
  Dev<float> gqkv(qkv), gdout(dout), gout(dout.size()), glse(size_t(B) * NH * T),
      gdqkv(std::vector<float>(qkv.size(), NAN));
  cuda::attention_forward(gout.p, glse.p, gqkv.p, B, T, NH, NKV, HD);
  cuda::attention_backward(gdqkv.p, gdout.p, gqkv.p, gout.p, glse.p, B, T, NH, NKV, HD);
  return {gout.host(), glse.host(), gdqkv.host()};
}

void check_attention(int B, int T, int NH, int HD, int NKV = 0) {
  if (NKV == 0) NKV = NH;
  INFO("B " << B << " T " << T << " NH " << NH << " NKV " << NKV << " HD " << HD);
  const size_t nqkv = size_t(B) * T * (NH + 2 * NKV) * HD, no = size_t(B) * T * NH * HD;
  const auto qkv = gauss(nqkv, 100 + T, 1.0f), dout = gauss(no, 200 + T);
  const AttnResult c = cpu_attention(qkv, dout, B, T, NH, HD, NKV);
  const AttnResult g = gpu_attention(qkv, dout, B, T, NH, HD, NKV);
  CHECK(rdiff(g.out, c.out) < 1e-5);
  CHECK(rdiff(g.lse, c.lse) < 1e-5);
  CHECK(rdiff(g.dqkv, c.dqkv) < 1e-4);
}

}  // namespace

TEST_CASE("cuBLAS attention matches the CPU at many shapes", "[gpu][attention]") {
  check_attention(1, 1, 1, 8);     // one token: P = 1, dq = dk = 0
  check_attention(2, 37, 3, 16);   // the shape of test_cuda_kernels.cpp
  check_attention(1, 64, 2, 64);   // exactly one CPU tile
  check_attention(3, 129, 4, 64);  // HD = 64, T one past two tiles, B > 1, NH > 1
  check_attention(2, 200, 1, 8);   // small HD, T no multiple of 32 or 64
  check_attention(1, 33, 5, 24);   // HD no multiple of 16 or 32
  check_attention(2, 256, 4, 64);  // gpt-tiny's head shape
  check_attention(1, 40, 2, 3);    // tiny odd HD
}

TEST_CASE("cuBLAS attention: a problem larger than one scratch chunk", "[gpu][attention]") {
  // 3 sequences of 4800 x 4800 scores: 69 M floats > 2^26 per scratch buffer, so two chunks
  check_attention(3, 4800, 1, 8);
}

TEST_CASE("cuBLAS attention: scratch grows and shrinks between calls", "[gpu][attention]") {
  check_attention(2, 300, 2, 32);
  check_attention(1, 20, 2, 32);   // smaller after larger: the buffers are reused
  check_attention(2, 301, 2, 32);  // a little larger again
}

TEST_CASE("cuBLAS attention is causal, deterministic and thread-safe", "[gpu][attention]") {
  const int B = 2, T = 70, NH = 2, HD = 16;
  const size_t nqkv = size_t(B) * T * NH * 3 * HD, no = size_t(B) * T * NH * HD;
  auto qkv = gauss(nqkv, 7), dout = gauss(no, 8);
  const AttnResult a = gpu_attention(qkv, dout, B, T, NH, HD);
  const AttnResult again = gpu_attention(qkv, dout, B, T, NH, HD);
  CHECK(a.out == again.out);
  CHECK(a.lse == again.lse);
  CHECK(a.dqkv == again.dqkv);

  // changing token T-1's k and v changes no output before it
  auto qkv2 = qkv;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int w = 1; w < 3; ++w)
        for (int i = 0; i < HD; ++i) qkv2[(((size_t(b) * T + T - 1) * NH + h) * 3 + w) * HD + i] += 1.0f;
  const AttnResult m = gpu_attention(qkv2, dout, B, T, NH, HD);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T - 1; ++t)
      for (int h = 0; h < NH; ++h)
        for (int i = 0; i < HD; ++i) {
          const size_t o = ((size_t(b) * T + t) * NH + h) * HD + i;
          REQUIRE(m.out[o] == a.out[o]);
        }

  // several host threads at once (virtual ranks share one GPU), each with its own shape
  const std::vector<std::tuple<int, int, int, int>> shapes = {{2, 37, 3, 16}, {1, 129, 2, 64}, {3, 50, 1, 8}};
  std::vector<AttnResult> want, got(shapes.size());
  std::vector<std::vector<float>> in(shapes.size()), gin(shapes.size());
  for (size_t s = 0; s < shapes.size(); ++s) {
    const auto [b, t, nh, hd] = shapes[s];
    in[s] = gauss(size_t(b) * t * nh * 3 * hd, 300 + s);
    gin[s] = gauss(size_t(b) * t * nh * hd, 400 + s);
    want.push_back(cpu_attention(in[s], gin[s], b, t, nh, hd));
  }
  std::vector<std::thread> threads;
  for (size_t s = 0; s < shapes.size(); ++s)
    threads.emplace_back([&, s] {
      const auto [b, t, nh, hd] = shapes[s];
      for (int rep = 0; rep < 3; ++rep) got[s] = gpu_attention(in[s], gin[s], b, t, nh, hd);
    });
  for (auto& th : threads) th.join();
  for (size_t s = 0; s < shapes.size(); ++s) {
    INFO("thread " << s);
    CHECK(rdiff(got[s].out, want[s].out) < 1e-5);
    CHECK(rdiff(got[s].lse, want[s].lse) < 1e-5);
    CHECK(rdiff(got[s].dqkv, want[s].dqkv) < 1e-4);
  }
}

TEST_CASE("bf16 matmul forward and backward match the CPU's bf16 matmul", "[gpu][bf16]") {
  for (const auto& [N, C, OC] : {std::tuple{1, 1, 1}, std::tuple{67, 48, 80}, std::tuple{130, 257, 96},
                                 std::tuple{512, 768, 2304}, std::tuple{33, 5, 1000}}) {
    INFO("N " << N << " C " << C << " OC " << OC);
    const size_t nx = size_t(N) * C, nw = size_t(OC) * C, ny = size_t(N) * OC;
    const auto x = gauss(nx, 1), w = gauss(nw, 2, 0.1f), b = gauss(OC, 3), dy = gauss(ny, 4);
    std::vector<float> y(ny), y_nb(ny), dx(nx), dw(nw, 0.5f), db(OC, 0.25f);
    cpu::matmul_forward_bf16(y.data(), x.data(), w.data(), b.data(), N, C, OC);
    cpu::matmul_forward_bf16(y_nb.data(), x.data(), w.data(), nullptr, N, C, OC);
    cpu::matmul_backward_bf16(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), N, C, OC);

    Dev<float> gx(x), gw(w), gb(b), gdy(dy), gy(std::vector<float>(ny, NAN)), gy_nb(std::vector<float>(ny, NAN)),
        gdx(std::vector<float>(nx, NAN)), gdw(std::vector<float>(nw, 0.5f)), gdb(std::vector<float>(OC, 0.25f));
    cuda::matmul_forward_bf16(gy.p, gx.p, gw.p, gb.p, N, C, OC);
    cuda::matmul_forward_bf16(gy_nb.p, gx.p, gw.p, nullptr, N, C, OC);
    cuda::matmul_backward_bf16(gdx.p, gdw.p, gdb.p, gdy.p, gx.p, gw.p, N, C, OC);
    // Identically rounded operands and exact products on both sides: only the fp32 additions
    // differ. The tensor cores do not add in IEEE round-to-nearest (they align a block of
    // products to the largest exponent and truncate), and cuBLAS picks its algorithm (split-K or
    // not) per call, so the difference grows with the depth K of the product: up to 2.9e-5 at
    // K = 512 on an H200 (2026-11-30), 50x below what rounding the operands to bf16 moves.
    auto tol = [](int K) { return 1e-5 * std::max(1.0, K / 128.0); };
    CHECK(rdiff(gy.host(), y) < tol(C));
    CHECK(rdiff(gy_nb.host(), y_nb) < tol(C));
    CHECK(rdiff(gdx.host(), dx) < tol(OC));
    CHECK(rdiff(gdw.host(), dw) < tol(N));
    CHECK(rdiff(gdb.host(), db) < tol(N));  // fp32 column sums in another order (1.3e-5 at N = 512)

    // nullptr skips dinp and dbias; dweight accumulates again
    cuda::matmul_backward_bf16(nullptr, gdw.p, nullptr, gdy.p, gx.p, gw.p, N, C, OC);
    cpu::matmul_backward_bf16(nullptr, dw.data(), nullptr, dy.data(), x.data(), w.data(), N, C, OC);
    CHECK(rdiff(gdw.host(), dw) < 2 * tol(N));  // two accumulations (4.6e-5 at N = 512 on an H200)
    CHECK(rdiff(gdb.host(), db) < tol(N));
  }
}

TEST_CASE("bf16 matmul is not the fp32 matmul", "[gpu][bf16]") {
  const int N = 64, C = 96, OC = 32;
  const auto x = gauss(size_t(N) * C, 5), w = gauss(size_t(OC) * C, 6);
  Dev<float> gx(x), gw(w), gy(size_t(N) * OC), gy32(size_t(N) * OC);
  cuda::matmul_forward_bf16(gy.p, gx.p, gw.p, nullptr, N, C, OC);
  cuda::matmul_forward(gy32.p, gx.p, gw.p, nullptr, N, C, OC);
  const double d = rdiff(gy.host(), gy32.host());
  CHECK(d > 1e-5);
  CHECK(d < 5e-2);
}

// ==== bf16 attention (attention_forward_bf16 / attention_backward_bf16) ==========================
namespace {

std::vector<float> bf16_rounded(const std::vector<float>& x) {
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = bf16_round(x[i]);
  return r;
}

// max |a - b| / max |b|; infinity when a has a non-finite value
double rel_to_max(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num = std::max(num, std::abs(double(a[i]) - b[i]));
    den = std::max(den, std::abs(double(b[i])));
  }
  return den > 0 ? num / den : num;
}

AttnResult gpu_attention_bf16(const std::vector<float>& qkv, const std::vector<float>& dout, int B,
                              int T, int NH, int HD, int NKV = 0) {
  if (NKV == 0) NKV = NH;
  Dev<float> gqkv(qkv), gdout(dout), gout(std::vector<float>(dout.size(), NAN)),
      glse(std::vector<float>(size_t(B) * NH * T, NAN)), gdqkv(std::vector<float>(qkv.size(), NAN));
  cuda::attention_forward_bf16(gout.p, glse.p, gqkv.p, B, T, NH, NKV, HD);
  cuda::attention_backward_bf16(gdqkv.p, gdout.p, gqkv.p, gout.p, glse.p, B, T, NH, NKV, HD);
  return {gout.host(), glse.host(), gdqkv.host()};
}

AttnResult cpu_attention_bf16(const std::vector<float>& qkv, const std::vector<float>& dout, int B,
                              int T, int NH, int HD, int NKV = 0) {
  if (NKV == 0) NKV = NH;
  AttnResult r{std::vector<float>(dout.size()), std::vector<float>(size_t(B) * NH * T),
               std::vector<float>(qkv.size())};
  cpu::attention_forward_bf16(r.out.data(), r.lse.data(), qkv.data(), B, T, NH, NKV, HD);
  cpu::attention_backward_bf16(r.dqkv.data(), dout.data(), qkv.data(), r.out.data(), r.lse.data(), B,
                               T, NH, NKV, HD);
  return r;
}

// The GPU's bf16 attention rounds P and dS on top of q, k, v and dout: against attention on
// pre-rounded inputs (which keeps P and dS fp32) out and dqkv differ by that rounding, ~2^-9 of
// the magnitudes, checked at 2e-2 of the largest one. lse comes from S = scale Q K^T whose bf16
// products are exact: only the tensor cores' additions differ (1e-4).
constexpr double kBf16Tol = 2e-2;

void check_attention_bf16(int B, int T, int NH, int HD, bool with_cpu = true, int NKV = 0) {
  if (NKV == 0) NKV = NH;
  INFO("bf16 attention: B " << B << " T " << T << " NH " << NH << " NKV " << NKV << " HD " << HD);
  const size_t nqkv = size_t(B) * T * (NH + 2 * NKV) * HD, no = size_t(B) * T * NH * HD;
  const auto qkv = gauss(nqkv, 500 + T, 1.0f), dout = gauss(no, 600 + T);
  const AttnResult g = gpu_attention_bf16(qkv, dout, B, T, NH, HD, NKV);
  // the CUDA fp32 attention on pre-rounded inputs
  const AttnResult f = gpu_attention(bf16_rounded(qkv), bf16_rounded(dout), B, T, NH, HD, NKV);
  CHECK(rel_to_max(g.out, f.out) < kBf16Tol);
  CHECK(rel_to_max(g.lse, f.lse) < 1e-4);
  CHECK(rel_to_max(g.dqkv, f.dqkv) < kBf16Tol);
  // the CPU emulation (rounds q, k, v, dout, not P and dS)
  if (with_cpu) {
    const AttnResult c = cpu_attention_bf16(qkv, dout, B, T, NH, HD, NKV);
    CHECK(rel_to_max(g.out, c.out) < kBf16Tol);
    CHECK(rel_to_max(g.lse, c.lse) < 1e-4);
    CHECK(rel_to_max(g.dqkv, c.dqkv) < kBf16Tol);
  }
  // and it is not the fp32 attention on unrounded inputs
  if (T > 1) {
    const AttnResult u = gpu_attention(qkv, dout, B, T, NH, HD, NKV);
    CHECK(rel_to_max(g.dqkv, u.dqkv) > 1e-6);
  }
}

}  // namespace

TEST_CASE("bf16 attention matches the fp32 attention on rounded inputs and the CPU emulation", "[gpu][bf16][attention]") {
  check_attention_bf16(1, 1, 1, 64);   // one token: P = 1, dq = dk = 0
  check_attention_bf16(1, 2, 1, 64);
  check_attention_bf16(2, 17, 3, 64);
  check_attention_bf16(2, 37, 3, 16);
  check_attention_bf16(1, 64, 2, 64);
  check_attention_bf16(3, 129, 4, 64);  // HD = 64, B > 1, NH > 1
  check_attention_bf16(2, 200, 1, 8);   // small HD, T no multiple of 32 or 64
  check_attention_bf16(1, 33, 5, 24);
  check_attention_bf16(1, 255, 2, 64);  // odd leading dimension of P and dS
  check_attention_bf16(2, 256, 4, 64);  // gpt-tiny's head shape
  check_attention_bf16(1, 40, 2, 3);    // tiny odd HD: unaligned k, v slices
}

TEST_CASE("bf16 attention: a problem larger than one scratch chunk", "[gpu][bf16][attention]") {
  // 3 sequences of 4800 x 4800 scores: two chunks, as the fp32 test
  check_attention_bf16(3, 4800, 1, 8);
  // gpt2-124m's head shape, a few sequences (no CPU comparison: the fp32 GPU one suffices)
  check_attention_bf16(4, 1024, 12, 64, /*with_cpu=*/false);
}

TEST_CASE("bf16 attention: scratch reuse, determinism and threads", "[gpu][bf16][attention]") {
  check_attention_bf16(2, 300, 2, 32);
  check_attention_bf16(1, 20, 2, 32);   // smaller after larger: the buffers are reused
  check_attention_bf16(2, 301, 2, 32);  // a little larger again

  // the fp32 attention right after the bf16 one still matches the CPU (shared fp32 scratch)
  check_attention(2, 37, 3, 16);

  const int B = 2, T = 70, NH = 2, HD = 16;
  const auto qkv = gauss(size_t(B) * T * NH * 3 * HD, 17), dout = gauss(size_t(B) * T * NH * HD, 18);
  const AttnResult a = gpu_attention_bf16(qkv, dout, B, T, NH, HD);
  const AttnResult again = gpu_attention_bf16(qkv, dout, B, T, NH, HD);
  CHECK(a.out == again.out);
  CHECK(a.lse == again.lse);
  CHECK(a.dqkv == again.dqkv);

  // several host threads at once (virtual ranks share one GPU), each with its own shape
  const std::vector<std::tuple<int, int, int, int>> shapes = {{2, 37, 3, 16}, {1, 129, 2, 64}, {3, 50, 1, 8}};
  std::vector<AttnResult> want, got(shapes.size());
  std::vector<std::vector<float>> in(shapes.size()), gin(shapes.size());
  for (size_t s = 0; s < shapes.size(); ++s) {
    const auto [b, t, nh, hd] = shapes[s];
    in[s] = gauss(size_t(b) * t * nh * 3 * hd, 700 + s);
    gin[s] = gauss(size_t(b) * t * nh * hd, 800 + s);
    want.push_back(gpu_attention_bf16(in[s], gin[s], b, t, nh, hd));
  }
  std::vector<std::thread> threads;
  for (size_t s = 0; s < shapes.size(); ++s)
    threads.emplace_back([&, s] {
      const auto [b, t, nh, hd] = shapes[s];
      for (int rep = 0; rep < 3; ++rep) got[s] = gpu_attention_bf16(in[s], gin[s], b, t, nh, hd);
    });
  for (auto& th : threads) th.join();
  for (size_t s = 0; s < shapes.size(); ++s) {
    INFO("thread " << s);
    CHECK(got[s].out == want[s].out);  // same GPU, same library: the same bits
    CHECK(got[s].lse == want[s].lse);
    CHECK(got[s].dqkv == want[s].dqkv);
  }
}

// ==== grouped-query attention (NKV < NH key/value heads) =========================================

TEST_CASE("cuBLAS attention with grouped-query heads (GQA) matches the CPU", "[gpu][attention][gqa]") {
  check_attention(2, 100, 4, 32, 2);   // 2 heads a group, T no multiple of 64
  check_attention(2, 100, 8, 32, 1);   // one k/v head for all (multi-query)
  check_attention(1, 129, 8, 64, 2);   // 4 heads a group
  check_attention(3, 70, 6, 48, 3);    // HD no multiple of 32
  check_attention(1, 40, 4, 3, 2);     // tiny odd HD
  check_attention(1, 1, 4, 8, 1);      // one token
  check_attention(2, 2100, 8, 16, 2);  // 2 x 35 M scores > 2^26: two chunks of one sequence
}

TEST_CASE("GQA attention on the GPU is deterministic and overwrites dqkv", "[gpu][attention][gqa]") {
  // the group's dK and dV accumulate over its heads with beta = 1 GEMMs: the same bits every
  // time, and the NaN that gpu_attention puts in dqkv first must not survive
  const int B = 2, T = 90, NH = 8, NKV = 2, HD = 32;
  const auto qkv = gauss(size_t(B) * T * (NH + 2 * NKV) * HD, 31), dout = gauss(size_t(B) * T * NH * HD, 32);
  const AttnResult a = gpu_attention(qkv, dout, B, T, NH, HD, NKV);
  const AttnResult again = gpu_attention(qkv, dout, B, T, NH, HD, NKV);
  CHECK(a.out == again.out);
  CHECK(a.lse == again.lse);
  CHECK(a.dqkv == again.dqkv);
  CHECK(std::none_of(a.dqkv.begin(), a.dqkv.end(), [](float x) { return std::isnan(x); }));
  const AttnResult b = gpu_attention_bf16(qkv, dout, B, T, NH, HD, NKV);
  const AttnResult b2 = gpu_attention_bf16(qkv, dout, B, T, NH, HD, NKV);
  CHECK(b.dqkv == b2.dqkv);
}

TEST_CASE("bf16 GQA attention matches fp32 on rounded inputs and the CPU emulation", "[gpu][bf16][attention][gqa]") {
  check_attention_bf16(2, 100, 4, 32, true, 2);
  check_attention_bf16(2, 100, 8, 32, true, 1);
  check_attention_bf16(1, 129, 8, 64, true, 2);
  check_attention_bf16(3, 70, 6, 48, true, 3);
  check_attention_bf16(1, 40, 4, 3, true, 2);
  check_attention_bf16(2, 256, 8, 64, true, 2);
}
