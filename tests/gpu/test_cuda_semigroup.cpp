// The semigroup attention kernels on the GPU (kernels/cuda/semigroup_attention.cu) against their
// CPU twins (kernels/cpu/semigroup_attention.cpp, semigroup_esr_attention.cpp, themselves checked
// against double references and finite differences in tests/unit): forward outputs, lse, the
// whitened g, every input gradient and the scalar parameter gradients, on random inputs with T
// not a multiple of 32 or 64, HD 32 and 64, several heads, ESR with 3 and 4 scales. Part of
// lossytp_gpu_tests (main() in test_cuda_kernels.cpp; skipped without a GPU). Run with
// `lossytp_gpu_tests "[semigroup]"`.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "gpu/device_array.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"
#include "kernels/philox.h"

using namespace lossytp;
using testing::Dev;

namespace {

std::vector<float> randn(size_t n, uint64_t stream, float scale = 1.0f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * philox_normal(1234, stream, i);
  return v;
}

// max |a - b| / (1 + |b|)
double diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double w = 0;
  for (size_t i = 0; i < a.size(); ++i) w = std::max(w, std::abs(double(a[i]) - b[i]) / (1 + std::abs(b[i])));
  return w;
}

// A scalar gradient (a sum over every logit, with cancellations; the two devices sum in different
// orders): within 1e-4 of itself plus 1e-5 of the largest gradient of its kind.
bool grad_close(double a, double b, double scale) { return std::abs(a - b) <= 1e-4 * std::abs(b) + 1e-5 * scale; }

struct Shape {
  int B, T, NH, HD;
};

}  // namespace

TEST_CASE("semigroup kernel (generator step): CUDA forward and backward match the CPU", "[gpu][semigroup]") {
  for (const Shape s : {Shape{2, 37, 3, 32}, Shape{1, 70, 2, 64}, Shape{2, 129, 2, 32}, Shape{1, 5, 1, 64}}) {
    const auto [B, T, NH, HD] = s;
    INFO("B " << B << " T " << T << " NH " << NH << " HD " << HD);
    const float t = 0.73f, c = 0.041f;
    const size_t nqkv = size_t(B) * T * 3 * NH * HD, no = size_t(B) * T * NH * HD, nl = size_t(B) * NH * T;
    const auto qkv = randn(nqkv, 1 + T), dy = randn(no, 2 + T);
    std::vector<float> y(no), o(no), lse(nl), dqkv(nqkv);
    double dt = 0.5, dc = -0.25;  // accumulated into
    cpu::semigroup_attention_forward(y.data(), o.data(), lse.data(), qkv.data(), B, T, NH, HD, t, c);
    cpu::semigroup_attention_backward(dqkv.data(), &dt, &dc, dy.data(), qkv.data(), o.data(), lse.data(), B, T,
                                      NH, HD, t, c);
    Dev<float> gqkv(qkv), gdy(dy), gy(no), go(no), glse(nl), gdqkv(nqkv);
    double gdt = 0.5, gdc = -0.25;
    cuda::semigroup_attention_forward(gy.p, go.p, glse.p, gqkv.p, B, T, NH, HD, t, c);
    cuda::semigroup_attention_backward(gdqkv.p, &gdt, &gdc, gdy.p, gqkv.p, go.p, glse.p, B, T, NH, HD, t, c);
    CHECK(diff(gy.host(), y) < 1e-5);
    CHECK(diff(go.host(), o) < 1e-5);
    CHECK(diff(glse.host(), lse) < 1e-5);
    CHECK(diff(gdqkv.host(), dqkv) < 1e-4);
    INFO("dt " << gdt << " vs " << dt << ", dc " << gdc << " vs " << dc);
    const double scale = std::max(std::abs(dt), std::abs(dc));
    CHECK(grad_close(gdt, dt, scale));
    CHECK(grad_close(gdc, dc, scale));
    // deterministic: a second backward gives the same bits
    double gdt2 = 0.5, gdc2 = -0.25;
    const auto first = gdqkv.host();
    cuda::semigroup_attention_backward(gdqkv.p, &gdt2, &gdc2, gdy.p, gqkv.p, go.p, glse.p, B, T, NH, HD, t, c);
    CHECK(gdqkv.host() == first);
    CHECK(gdt2 == gdt);
    CHECK(gdc2 == gdc);
  }
}

TEST_CASE("semigroup-esr kernel: CUDA forward and backward match the CPU", "[gpu][semigroup]") {
  struct Case {
    Shape s;
    int Nt;
  };
  for (const Case k : {Case{{2, 37, 2, 32}, 4}, Case{{1, 70, 3, 64}, 4}, Case{{2, 45, 1, 32}, 3}, Case{{1, 3, 2, 64}, 4}}) {
    const auto [B, T, NH, HD] = k.s;
    const int Nt = k.Nt;
    INFO("B " << B << " T " << T << " NH " << NH << " HD " << HD << " Nt " << Nt);
    const float lam = 0.62f, alpha = 0.08f;
    const size_t nq = size_t(B) * T * NH * 4 * HD, no = size_t(B) * T * NH * HD, nl = size_t(B) * NH * T;
    const auto qkvg0 = randn(nq, 10 + T, 0.7f), dy = randn(no, 11 + T);
    std::vector<float> tau(NH * Nt), logw(NH * Nt), hb(NH), os(NH);
    for (int h = 0; h < NH; ++h) {
      double z = 0;
      for (int s = 0; s < Nt; ++s) z += std::exp(0.3 * s - 0.1 * h);
      for (int s = 0; s < Nt; ++s) {
        tau[h * Nt + s] = std::exp(-0.5f + 0.4f * s - 0.2f * h);
        logw[h * Nt + s] = static_cast<float>(std::log(std::exp(0.3 * s - 0.1 * h) / z + 1e-12));
      }
      hb[h] = 0.5f * (1.2f + 0.3f * h);
      os[h] = 1.0f - 0.1f * h;
    }
    std::vector<float> qkvg = qkvg0, y(no), u(no), w2(no), lse(nl), rstd(nl), dq(nq);
    double g_lam = 0.0;
    std::vector<double> g_tau(NH * Nt, 0.0), g_w(NH * Nt, 0.0), g_hb(NH, 0.0), g_os(NH, 0.0);
    cpu::semigroup_esr_forward(y.data(), u.data(), w2.data(), lse.data(), rstd.data(), qkvg.data(), tau.data(),
                               logw.data(), hb.data(), os.data(), lam, alpha, B, T, NH, HD, Nt);
    cpu::semigroup_esr_backward(dq.data(), &g_lam, g_tau.data(), g_w.data(), g_hb.data(), g_os.data(), dy.data(),
                                qkvg.data(), rstd.data(), u.data(), w2.data(), lse.data(), tau.data(), logw.data(),
                                hb.data(), os.data(), lam, alpha, B, T, NH, HD, Nt);
    Dev<float> gq(qkvg0), gdy(dy), gy(no), gu(no), gw2(no), glse(nl), grstd(nl), gdq(nq);
    double c_lam = 0.0;
    std::vector<double> c_tau(NH * Nt, 0.0), c_w(NH * Nt, 0.0), c_hb(NH, 0.0), c_os(NH, 0.0);
    cuda::semigroup_esr_forward(gy.p, gu.p, gw2.p, glse.p, grstd.p, gq.p, tau.data(), logw.data(), hb.data(),
                                os.data(), lam, alpha, B, T, NH, HD, Nt);
    cuda::semigroup_esr_backward(gdq.p, &c_lam, c_tau.data(), c_w.data(), c_hb.data(), c_os.data(), gdy.p, gq.p,
                                 grstd.p, gu.p, gw2.p, glse.p, tau.data(), logw.data(), hb.data(), os.data(), lam,
                                 alpha, B, T, NH, HD, Nt);
    CHECK(diff(gq.host(), qkvg) < 1e-5);  // g whitened in place
    CHECK(diff(grstd.host(), rstd) < 1e-5);
    CHECK(diff(gu.host(), u) < 1e-5);
    CHECK(diff(gw2.host(), w2) < 1e-5);
    CHECK(diff(gy.host(), y) < 1e-5);
    CHECK(diff(glse.host(), lse) < 1e-5);
    CHECK(diff(gdq.host(), dq) < 1e-4);
    double scale = std::abs(g_lam);
    for (const auto* v : {&g_tau, &g_w, &g_hb, &g_os})
      for (double x : *v) scale = std::max(scale, std::abs(x));
    CHECK(grad_close(c_lam, g_lam, scale));
    for (int h = 0; h < NH; ++h) {
      INFO("head " << h);
      CHECK(grad_close(c_hb[h], g_hb[h], scale));
      CHECK(grad_close(c_os[h], g_os[h], scale));
      for (int s = 0; s < Nt; ++s) {
        CHECK(grad_close(c_tau[h * Nt + s], g_tau[h * Nt + s], scale));
        CHECK(grad_close(c_w[h * Nt + s], g_w[h * Nt + s], scale));
      }
    }
    // deterministic: a second backward gives the same bits
    const auto first = gdq.host();
    double c_lam2 = 0.0;
    std::vector<double> c_tau2(NH * Nt, 0.0), c_w2(NH * Nt, 0.0), c_hb2(NH, 0.0), c_os2(NH, 0.0);
    cuda::semigroup_esr_backward(gdq.p, &c_lam2, c_tau2.data(), c_w2.data(), c_hb2.data(), c_os2.data(), gdy.p, gq.p,
                                 grstd.p, gu.p, gw2.p, glse.p, tau.data(), logw.data(), hb.data(), os.data(), lam,
                                 alpha, B, T, NH, HD, Nt);
    CHECK(gdq.host() == first);
    CHECK(c_lam2 == c_lam);
    CHECK(c_tau2 == c_tau);
    CHECK(c_w2 == c_w);
  }
}
