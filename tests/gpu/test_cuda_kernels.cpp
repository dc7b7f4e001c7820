// Every CUDA kernel against its CPU twin (kernels/cpu, fp32, tight tolerances), and the packet
// masks bit for bit. Without a GPU the binary says so and exits 77, which ctest reports as
// skipped (tests/CMakeLists.txt: SKIP_RETURN_CODE 77).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"
#include "gpu/device_array.h"
#include "kernels/philox.h"
#include "sim/nccl_backend.h"
#include "sim/tensor.h"
#include "sim/ring_collectives.h"

#include <mpi.h>

using namespace lossytp;
using testing::Dev;

namespace {

std::vector<float> randn(size_t n, uint64_t stream, float scale = 1.0f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * philox_normal(42, stream, i);
  return v;
}

std::vector<int32_t> tokens(size_t n, int vocab, uint64_t stream) {
  std::vector<int32_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = philox4x32_10(i, 0, stream, 0, 7, 0).v[0] % vocab;
  return t;
}

// max |a - b| / (1 + |b|)
double diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double w = 0;
  for (size_t i = 0; i < a.size(); ++i) w = std::max(w, std::abs(double(a[i]) - b[i]) / (1 + std::abs(b[i])));
  return w;
}

}  // namespace

TEST_CASE("matmul forward and backward match the CPU", "[gpu]") {
  const int N = 67, C = 48, OC = 80;
  auto x = randn(N * C, 1), w = randn(OC * C, 2), b = randn(OC, 3), dy = randn(N * OC, 4);
  std::vector<float> y(N * OC), dx(N * C), dw(OC * C, 0.5f), db(OC, 0.25f);
  cpu::matmul_forward(y.data(), x.data(), w.data(), b.data(), N, C, OC);
  cpu::matmul_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), N, C, OC);
  Dev<float> gx(x), gw(w), gb(b), gdy(dy), gy(N * OC), gdx(N * C), gdw(std::vector<float>(OC * C, 0.5f)),
      gdb(std::vector<float>(OC, 0.25f));
  cuda::matmul_forward(gy.p, gx.p, gw.p, gb.p, N, C, OC);
  cuda::matmul_backward(gdx.p, gdw.p, gdb.p, gdy.p, gx.p, gw.p, N, C, OC);
  CHECK(diff(gy.host(), y) < 1e-5);
  CHECK(diff(gdx.host(), dx) < 1e-5);
  CHECK(diff(gdw.host(), dw) < 1e-5);
  CHECK(diff(gdb.host(), db) < 1e-5);
}

TEST_CASE("layernorm and gelu match the CPU", "[gpu]") {
  const int N = 33, C = 96;
  auto x = randn(N * C, 5, 2.0f), w = randn(C, 6), b = randn(C, 7), dy = randn(N * C, 8);
  std::vector<float> y(N * C), mean(N), rstd(N), dx(N * C, 0.1f), dw(C), db(C);
  cpu::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C, 1e-5f);
  cpu::layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
  Dev<float> gx(x), gw(w), gb(b), gdy(dy), gy(N * C), gm(N), gr(N), gdx(std::vector<float>(N * C, 0.1f)), gdw(C), gdb(C);
  cuda::layernorm_forward(gy.p, gm.p, gr.p, gx.p, gw.p, gb.p, N, C, 1e-5f);
  cuda::layernorm_backward(gdx.p, gdw.p, gdb.p, gdy.p, gx.p, gw.p, gm.p, gr.p, N, C);
  CHECK(diff(gy.host(), y) < 1e-5);
  CHECK(diff(gdx.host(), dx) < 1e-5);
  CHECK(diff(gdw.host(), dw) < 1e-5);
  CHECK(diff(gdb.host(), db) < 1e-5);

  const size_t n = 5000;
  auto u = randn(n, 9, 3.0f), du = randn(n, 10);
  std::vector<float> g(n), dg(n);
  cpu::gelu_forward(g.data(), u.data(), n);
  cpu::gelu_backward(dg.data(), u.data(), du.data(), n);
  Dev<float> gu(u), gdu(du), gg(n), gdg(n);
  cuda::gelu_forward(gg.p, gu.p, n);
  cuda::gelu_backward(gdg.p, gu.p, gdu.p, n);
  CHECK(diff(gg.host(), g) < 1e-5);
  CHECK(diff(gdg.host(), dg) < 1e-5);
}

TEST_CASE("rmsnorm, rope, swiglu and fill_cols match the CPU", "[gpu][llama]") {
  for (const auto& [N, C] : {std::pair{33, 96}, std::pair{7, 1000}}) {  // C past 32 lanes, and not a multiple
    INFO("rmsnorm N=" << N << " C=" << C);
    auto x = randn(size_t(N) * C, 30, 2.0f), w = randn(C, 31), dy = randn(size_t(N) * C, 32);
    std::vector<float> y(size_t(N) * C), rstd(N), dx(size_t(N) * C, 0.1f), dw(C, 0.25f);
    cpu::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-6f);
    cpu::rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), N, C);
    Dev<float> gx(x), gw(w), gdy(dy), gy(size_t(N) * C), gr(N), gdx(std::vector<float>(size_t(N) * C, 0.1f)),
        gdw(std::vector<float>(C, 0.25f));
    cuda::rmsnorm_forward(gy.p, gr.p, gx.p, gw.p, N, C, 1e-6f);
    cuda::rmsnorm_backward(gdx.p, gdw.p, gdy.p, gx.p, gw.p, gr.p, N, C);
    CHECK(diff(gy.host(), y) < 1e-5);
    CHECK(diff(gr.host(), rstd) < 1e-5);
    CHECK(diff(gdx.host(), dx) < 1e-5);
    CHECK(diff(gdw.host(), dw) < 1e-5);
  }

  struct Shape { int B, T, NH, NKV, HD, rot; };
  for (const Shape s : {Shape{2, 37, 8, 2, 64, 64}, Shape{1, 5, 3, 3, 24, 16}, Shape{2, 9, 4, 1, 10, 6}}) {
    INFO("rope B=" << s.B << " T=" << s.T << " NH=" << s.NH << " NKV=" << s.NKV << " HD=" << s.HD << " rot=" << s.rot);
    const int h = s.rot / 2;
    std::vector<float> cs(size_t(s.T) * h), sn(size_t(s.T) * h);
    for (int t = 0; t < s.T; ++t)
      for (int i = 0; i < h; ++i) {
        const double a = (100 + t) * std::pow(10000.0, -2.0 * i / s.rot);
        cs[t * h + i] = float(std::cos(a));
        sn[t * h + i] = float(std::sin(a));
      }
    const size_t n = size_t(s.B) * s.T * (s.NH + 2 * s.NKV) * s.HD;
    auto q = randn(n, 33), dq = randn(n, 34);
    Dev<float> gq(q), gdq(dq), gc(cs), gs(sn);
    cpu::rope_forward(q.data(), cs.data(), sn.data(), s.B, s.T, s.NH, s.NKV, s.HD, s.rot);
    cpu::rope_backward(dq.data(), cs.data(), sn.data(), s.B, s.T, s.NH, s.NKV, s.HD, s.rot);
    cuda::rope_forward(gq.p, gc.p, gs.p, s.B, s.T, s.NH, s.NKV, s.HD, s.rot);
    cuda::rope_backward(gdq.p, gc.p, gs.p, s.B, s.T, s.NH, s.NKV, s.HD, s.rot);
    CHECK(diff(gq.host(), q) < 1e-6);
    CHECK(diff(gdq.host(), dq) < 1e-6);
  }

  const int N = 33, F = 333;
  auto in = randn(size_t(N) * 2 * F, 35, 3.0f), dout = randn(size_t(N) * F, 36);
  const float extreme[] = {-100.0f, -89.0f, -88.0f, -40.0f, 0.0f, 40.0f, 88.0f, 100.0f};
  for (int f = 0; f < 8; ++f) in[f] = extreme[f];
  std::vector<float> o(size_t(N) * F), din(size_t(N) * 2 * F);
  cpu::swiglu_forward(o.data(), in.data(), N, F);
  cpu::swiglu_backward(din.data(), in.data(), dout.data(), N, F);
  Dev<float> gin(in), gdout(dout), go(size_t(N) * F), gdin(size_t(N) * 2 * F);
  cuda::swiglu_forward(go.p, gin.p, N, F);
  cuda::swiglu_backward(gdin.p, gin.p, gdout.p, N, F);
  CHECK(diff(go.host(), o) < 1e-5);
  CHECK(diff(gdin.host(), din) < 1e-5);

  const int ld = 50, c0 = 40, c1 = 47;
  auto m = randn(size_t(N) * ld, 37);
  Dev<float> gm(m);
  cpu::fill_cols(m.data(), N, ld, c0, c1, -INFINITY);
  cuda::fill_cols(gm.p, N, ld, c0, c1, -INFINITY);
  CHECK(gm.host() == m);
}

TEST_CASE("causal attention forward and backward match the CPU", "[gpu]") {
  const int B = 2, T = 37, NH = 3, HD = 16;
  const size_t nqkv = size_t(B) * T * NH * 3 * HD, no = size_t(B) * T * NH * HD;
  auto qkv = randn(nqkv, 11), dout = randn(no, 12);
  std::vector<float> out(no), lse(size_t(B) * NH * T), dqkv(nqkv);
  cpu::attention_forward(out.data(), lse.data(), qkv.data(), B, T, NH, NH, HD);
  cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T, NH, NH, HD);
  Dev<float> gqkv(qkv), gdout(dout), gout(no), glse(lse.size()), gdqkv(nqkv);
  cuda::attention_forward(gout.p, glse.p, gqkv.p, B, T, NH, NH, HD);
  cuda::attention_backward(gdqkv.p, gdout.p, gqkv.p, gout.p, glse.p, B, T, NH, NH, HD);
  CHECK(diff(gout.host(), out) < 1e-5);
  CHECK(diff(glse.host(), lse) < 1e-5);
  CHECK(diff(gdqkv.host(), dqkv) < 1e-4);
}

TEST_CASE("embeddings and cross-entropy match the CPU", "[gpu]") {
  const int N = 40, C = 24, V = 50, v0 = 50;  // second half of a 100-token vocabulary
  auto tok = tokens(N, 100, 1);
  auto table = randn(size_t(V) * C, 13), dy = randn(size_t(N) * C, 14), pos = randn(size_t(8) * C, 15);
  std::vector<float> e(N * C), dt(V * C, 0.0f), dpos(8 * C, 0.0f);
  cpu::embedding_forward(e.data(), tok.data(), table.data(), N, C, v0, V);
  cpu::position_forward(e.data(), pos.data(), 5, 8, C);
  cpu::embedding_backward(dt.data(), tok.data(), dy.data(), N, C, v0, V);
  cpu::position_backward(dpos.data(), dy.data(), 5, 8, C);
  Dev<int32_t> gtok(tok);
  Dev<float> gtable(table), gdy(dy), gpos(pos), ge(size_t(N) * C), gdt(size_t(V) * C), gdpos(size_t(8) * C);
  cuda::embedding_forward(ge.p, gtok.p, gtable.p, N, C, v0, V);
  cuda::position_forward(ge.p, gpos.p, 5, 8, C);
  cuda::embedding_backward(gdt.p, gtok.p, gdy.p, N, C, v0, V);
  cuda::position_backward(gdpos.p, gdy.p, 5, 8, C);
  CHECK(diff(ge.host(), e) < 1e-6);
  CHECK(diff(gdt.host(), dt) < 1e-5);
  CHECK(diff(gdpos.host(), dpos) < 1e-5);

  auto logits = randn(size_t(N) * V, 16, 3.0f);
  auto dloss = randn(N, 17);
  std::vector<float> mx(N), tg(N), se(N), loss(N), l = logits;
  std::vector<int32_t> tgt = tok;
  tgt[1] = -1;  // an ignored target: zero loss and zero gradient row
  Dev<int32_t> gtgt(tgt);
  cpu::ce_local_max(mx.data(), l.data(), N, V);
  cpu::ce_local_target(tg.data(), l.data(), tgt.data(), N, V, v0);
  cpu::ce_local_exp_sum(se.data(), l.data(), mx.data(), N, V);
  cpu::ce_losses(loss.data(), mx.data(), se.data(), tg.data(), tgt.data(), N);
  cpu::ce_backward_inplace(l.data(), se.data(), tgt.data(), dloss.data(), N, V, v0);
  CHECK(loss[1] == 0.0f);
  Dev<float> gl(logits), gmx(N), gtg(N), gse(N), gloss(N), gdl(dloss);
  cuda::ce_local_max(gmx.p, gl.p, N, V);
  cuda::ce_local_target(gtg.p, gl.p, gtgt.p, N, V, v0);
  cuda::ce_local_exp_sum(gse.p, gl.p, gmx.p, N, V);
  cuda::ce_losses(gloss.p, gmx.p, gse.p, gtg.p, gtgt.p, N);
  cuda::ce_backward_inplace(gl.p, gse.p, gtgt.p, gdl.p, N, V, v0);
  CHECK(diff(gmx.host(), mx) == 0);
  CHECK(diff(gtg.host(), tg) == 0);
  CHECK(diff(gse.host(), se) < 1e-5);
  CHECK(diff(gloss.host(), loss) < 1e-5);
  CHECK(diff(gl.host(), l) < 1e-5);
}

TEST_CASE("AdamW matches the CPU", "[gpu]") {
  const size_t n = 3001;
  auto p = randn(n, 18), g = randn(n, 19), m = randn(n, 20, 0.1f), v = randn(n, 21, 0.1f);
  for (float& x : v) x = x * x;
  Dev<float> gp(p), gg(g), gm(m), gv(v);
  cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7);
  cuda::adamw_update(gp.p, gg.p, gm.p, gv.p, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7);
  CHECK(diff(gp.host(), p) < 1e-6);
  CHECK(diff(gm.host(), m) < 1e-6);
  CHECK(diff(gv.host(), v) < 1e-6);
}

TEST_CASE("packet masks are bit-identical to the CPU's", "[gpu]") {
  const size_t n = 100003;
  for (int64_t call : {0, 1, 77}) {
    const net::PacketStream s = net::packet_stream(1234, fnv1a64("tp.layer0.mlp.fc2.fwd"), 0, 1, 2, 0, 5, call, 0);
    std::vector<uint8_t> cpu_iid(n, 0), cpu_ge(n, 0);
    const uint64_t t = net::prob_threshold(0.03);
    net::iid_loss(s, 0, t, n, cpu_iid.data());
    const uint64_t t_loss[2] = {net::prob_threshold(0.01), net::prob_threshold(0.7)};
    const uint64_t t_pi = net::prob_threshold(0.05), t_gb = net::prob_threshold(0.01), t_bg = net::prob_threshold(0.19);
    net::ge_packet_loss_reference(s, t_pi, t_gb, t_bg, t_loss, n, cpu_ge.data());
    Dev<uint8_t> g_iid(n), g_ge(n);
    cuda::iid_mask(s, 0, t, n, g_iid.p);
    cuda::ge_packet_mask(s, t_pi, t_gb, t_bg, t_loss[0], t_loss[1], n, g_ge.p);
    CHECK(g_iid.host() == cpu_iid);
    CHECK(g_ge.host() == cpu_ge);
  }
}

TEST_CASE("a received block through its mask and fill policy matches the CPU", "[gpu]") {
  const size_t len = 10000, epp = 7;
  const size_t packets = (len + epp - 1) / epp;
  auto own = randn(len, 22), recv = randn(len, 23), stale = randn(len, 24);
  net::DeliveryPlan plan;
  plan.packet_bytes = epp * sizeof(float);
  plan.packets = packets;
  plan.lost_mask.resize(packets);
  for (size_t k = 0; k < packets; ++k) plan.lost_mask[k] = (k % 5 == 3);
  const net::Fill fills[] = {net::Fill::Zero, net::Fill::Rescale, net::Fill::Local, net::Fill::Stale};
  for (int f = 0; f < 4; ++f)
    for (bool reduce : {true, false}) {
      auto o = own, st = stale;
      apply_delivery(o.data(), recv.data(), len, plan, fills[f], reduce, ReduceOp::Sum, 1.25f, st.data());
      Dev<float> go(own), gr(recv), gs(stale);
      Dev<uint8_t> gmask(plan.lost_mask);
      cuda::apply_delivery(go.p, gr.p, len, gmask.p, epp, f, reduce, false, 1.25f, gs.p);
      INFO("fill " << f << " reduce " << reduce);
      CHECK(diff(go.host(), o) == 0);
      CHECK(diff(gs.host(), st) == 0);
    }
}

TEST_CASE("tensors carry their device", "[gpu]") {
  Tensor h({3, 4});
  for (size_t i = 0; i < h.numel(); ++i) h.data()[i] = static_cast<float>(i);
  Tensor d = h.to(Device::CUDA);
  CHECK(d.device() == Device::CUDA);
  Tensor back = d.slice(1, 3).to(Device::CPU);  // a view of rows 1..2
  REQUIRE(back.numel() == 8);
  CHECK(back.data()[0] == 4.0f);
  d.fill(2.5f);
  CHECK(d.to(Device::CPU).data()[11] == 2.5f);
  d.zero();
  CHECK(d.to(Device::CPU).data()[5] == 0.0f);
}

TEST_CASE("the NCCL backend moves device memory (one rank)", "[gpu]") {
  std::unique_ptr<Backend> owned = make_nccl_backend(MPI_COMM_SELF);  // from the GPU plugin
  Backend& b = *owned;
  b.set_timeout(30);
  std::vector<float> x = {1, 2, 3, 4};
  Dev<float> gx(x), gy(4), gz(4);
  b.sendrecv(gx.p, 16, 0, gy.p, 16, 0, 0);  // a ring hop to itself
  CHECK(gy.host() == x);
  b.all_gather(gx.p, gz.p, 4);
  CHECK(gz.host() == x);
  b.reduce_scatter(gx.p, gz.p, 4);
  CHECK(gz.host() == x);
  b.barrier();
}

int main(int argc, char** argv) {
  if (!cuda::device_available()) {
    std::printf("SKIP: no CUDA device on this machine; the GPU tests need one (the kernels were compiled and linked)\n");
    return 77;
  }
  std::printf("GPU: %s\n", cuda::device_name().c_str());
  MPI_Init(&argc, &argv);
  const int rc = Catch::Session().run(argc, argv);
  MPI_Finalize();
  return rc;
}
