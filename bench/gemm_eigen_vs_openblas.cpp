// GEMM backend choice and kernel timings for lossytp's CPU kernels, at 1 thread by default.
//
// Build (from the repository root):
//   g++ -std=c++20 -O3 -march=native -fopenmp -I. -I/usr/include/eigen3 bench/gemm_eigen_vs_openblas.cpp kernels/cpu/*.cpp -o /tmp/gemm_bench $(pkg-config --cflags --libs openblas)
// Run:
//   /tmp/gemm_bench [gemm|attn|step|all] [threads]      (default: all 1)
//
// Sections:
//   gemm  Eigen 3.4 vs OpenBLAS cblas_sgemm on the GEMM shapes of gpt-tiny (N = B*T = 2048
//         tokens, C = 256, vocab 4096) and gpt-small-like C = 768: forward (NT), backward data
//         (NN) and backward weight (TN) products. GFLOP/s, best of several runs.
//   attn  lossytp::cpu::attention_forward/backward at B=8, T=256, NH=4, HD=64, against the
//         causal FLOP count (fwd 2*2*B*NH*T*T/2*HD, bwd 2.5x that) at the measured sgemm peak.
//   step  every kernel call of one gpt-tiny training step (4 layers, B=8, T=256, C=256, 4
//         heads, vocab 4096, weight-tied head, AdamW), in order, on dummy data: where the time
//         goes, and the step's GEMM FLOPs vs its total time.
// Results are recorded in docs/kernels.md.
// gcc 12 reports -Wmaybe-uninitialized false positives inside Eigen's AVX-512 packet code once
// it is inlined here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"

namespace cpu = lossytp::cpu;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Best time of f over runs repeated for at least min_s seconds (and at least min_reps runs).
double best_time(const std::function<void()>& f, double min_s = 0.3, int min_reps = 3) {
  f();  // warm-up
  double best = 1e30, t_end = now() + min_s;
  for (int rep = 0; rep < min_reps || now() < t_end; ++rep) {
    const double t0 = now();
    f();
    best = std::min(best, now() - t0);
  }
  return best;
}

std::vector<float> filled(size_t n, float seed) {
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = std::sin(seed + 0.37f * static_cast<float>(i % 9973)) * 0.5f;
  return x;
}

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Map = Eigen::Map<RowMat>;
using CMap = Eigen::Map<const RowMat>;

struct Shape {
  const char* what;
  bool ta, tb;
  int M, N, K;
};

double peak_gflops = 0.0;  // best OpenBLAS GFLOP/s seen in the gemm section

void bench_gemm() {
  // linear layer out[N,OC] = inp[N,C] W[OC,C]^T: fwd NT (M=N, N=OC, K=C), bwd data NN
  // (M=N, N=C, K=OC), bwd weight TN (M=OC, N=C, K=N)
  std::vector<Shape> shapes;
  const int T = 2048;
  struct Lin { const char* name; int C, OC; };
  for (Lin l : {Lin{"qkv C=256", 256, 768}, Lin{"attn proj C=256", 256, 256},
                Lin{"fc C=256", 256, 1024}, Lin{"fc proj C=256", 1024, 256},
                Lin{"lm head V=4096", 256, 4096}, Lin{"qkv C=768", 768, 2304},
                Lin{"fc C=768", 768, 3072}}) {
    shapes.push_back({l.name, false, true, T, l.OC, l.C});
    shapes.push_back({l.name, false, false, T, l.C, l.OC});
    shapes.push_back({l.name, true, false, l.OC, l.C, T});
  }
  std::printf("GEMM, 1 thread, GFLOP/s (best of runs)\n");
  std::printf("%-16s %-3s %5s %5s %5s | %8s %8s | %s\n", "layer", "op", "M", "N", "K", "openblas",
              "eigen", "ratio");
  double tot_blas = 0.0, tot_eigen = 0.0, flops_all = 0.0;
  for (const Shape& s : shapes) {
    const int lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N;
    std::vector<float> A = filled(static_cast<size_t>(s.M) * s.K, 1.0f);
    std::vector<float> B = filled(static_cast<size_t>(s.K) * s.N, 2.0f);
    std::vector<float> C(static_cast<size_t>(s.M) * s.N, 0.0f);
    const double flops = 2.0 * s.M * s.N * s.K;
    const double tb = best_time([&] {
      cblas_sgemm(CblasRowMajor, s.ta ? CblasTrans : CblasNoTrans, s.tb ? CblasTrans : CblasNoTrans,
                  s.M, s.N, s.K, 1.0f, A.data(), lda, B.data(), ldb, 1.0f, C.data(), s.N);
    });
    CMap a(A.data(), s.ta ? s.K : s.M, s.ta ? s.M : s.K);
    CMap b(B.data(), s.tb ? s.N : s.K, s.tb ? s.K : s.N);
    Map c(C.data(), s.M, s.N);
    const double te = best_time([&] {
      if (!s.ta && !s.tb) c.noalias() += a * b;
      else if (!s.ta && s.tb) c.noalias() += a * b.transpose();
      else if (s.ta && !s.tb) c.noalias() += a.transpose() * b;
      else c.noalias() += a.transpose() * b.transpose();
    });
    tot_blas += tb;
    tot_eigen += te;
    flops_all += flops;
    peak_gflops = std::max(peak_gflops, flops / tb / 1e9);
    std::printf("%-16s %c%c  %5d %5d %5d | %8.1f %8.1f | %.2f\n", s.what, s.ta ? 'T' : 'N',
                s.tb ? 'T' : 'N', s.M, s.N, s.K, flops / tb / 1e9, flops / te / 1e9, te / tb);
    std::fflush(stdout);
  }
  std::printf("all shapes: openblas %.1f GFLOP/s, eigen %.1f GFLOP/s\n\n", flops_all / tot_blas / 1e9,
              flops_all / tot_eigen / 1e9);
}

void bench_attention() {
  const int B = 8, T = 256, NH = 4, HD = 64;
  const size_t nqkv = static_cast<size_t>(B) * T * NH * 3 * HD, nout = static_cast<size_t>(B) * T * NH * HD;
  std::vector<float> qkv = filled(nqkv, 3.0f), out(nout), lse(static_cast<size_t>(B) * NH * T);
  std::vector<float> dout = filled(nout, 4.0f), dqkv(nqkv);
  const double fwd_flops = 2.0 * 2.0 * B * NH * (T * T / 2.0) * HD, bwd_flops = 2.5 * fwd_flops;
  const double tf = best_time([&] {
    cpu::attention_forward(out.data(), lse.data(), qkv.data(), B, T, NH, NH, HD);
  }, 0.5, 5);
  const double tb = best_time([&] {
    cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T, NH, NH, HD);
  }, 0.5, 5);
  if (peak_gflops == 0.0) {  // measure the sgemm peak if the gemm section did not run
    std::vector<float> A = filled(2048 * 256, 1.0f), Bm = filled(768 * 256, 2.0f), C(2048 * 768);
    peak_gflops = 2.0 * 2048 * 768 * 256 / best_time([&] {
      cpu::sgemm(false, true, 2048, 768, 256, 1.0f, A.data(), 256, Bm.data(), 256, 0.0f, C.data(), 768);
    }) / 1e9;
  }
  const double ideal = (fwd_flops + bwd_flops) / (peak_gflops * 1e9);
  std::printf("attention B=%d T=%d NH=%d HD=%d, %d thread(s); sgemm peak %.1f GFLOP/s\n", B, T, NH,
              HD, cpu::num_threads(), peak_gflops);
  std::printf("  forward  %7.3f ms  %6.1f GFLOP/s (causal FLOPs)\n", tf * 1e3, fwd_flops / tf / 1e9);
  std::printf("  backward %7.3f ms  %6.1f GFLOP/s\n", tb * 1e3, bwd_flops / tb / 1e9);
  std::printf("  fwd+bwd  %7.3f ms  = %.2fx the time of its FLOPs at sgemm peak (%.3f ms)\n\n",
              (tf + tb) * 1e3, (tf + tb) / ideal, ideal * 1e3);
}

// One gpt-tiny training step, kernel by kernel (same calls and shapes as the model).
void bench_step() {
  const int B = 8, T = 256, C = 256, NH = 4, HD = C / NH, L = 4, V = 4096, N = B * T;
  auto buf = [](size_t n, float s = 0.1f) { return filled(n, s); };
  // parameters (per layer) and their gradients
  struct Layer {
    std::vector<float> ln1w, ln1b, wqkv, bqkv, wproj, bproj, ln2w, ln2b, wfc, bfc, wfp, bfp;
  };
  std::vector<Layer> P(L), G(L);
  for (int l = 0; l < L; ++l) {
    for (auto* p : {&P[l], &G[l]}) {
      p->ln1w = buf(C, 1.f); p->ln1b = buf(C); p->wqkv = buf(3 * C * C); p->bqkv = buf(3 * C);
      p->wproj = buf(C * C); p->bproj = buf(C); p->ln2w = buf(C, 1.f); p->ln2b = buf(C);
      p->wfc = buf(4 * C * C); p->bfc = buf(4 * C); p->wfp = buf(4 * C * C); p->bfp = buf(C);
    }
  }
  std::vector<float> wte = buf(static_cast<size_t>(V) * C), wpe = buf(T * C), lnfw = buf(C, 1.f), lnfb = buf(C);
  std::vector<float> dwte = wte, dwpe = wpe, dlnfw = lnfw, dlnfb = lnfb;
  // activations saved for the backward, per layer
  struct Acts {
    std::vector<float> res_in, ln1, ln1m, ln1r, qkv, att, lse, attproj, res_mid, ln2, ln2m, ln2r, fc, gelu;
  };
  std::vector<Acts> A(L);
  for (auto& a : A) {
    a.res_in.resize(N * C); a.ln1.resize(N * C); a.ln1m.resize(N); a.ln1r.resize(N);
    a.qkv.resize(N * 3 * C); a.att.resize(N * C); a.lse.resize(B * NH * T); a.attproj.resize(N * C);
    a.res_mid.resize(N * C); a.ln2.resize(N * C); a.ln2m.resize(N); a.ln2r.resize(N);
    a.fc.resize(N * 4 * C); a.gelu.resize(N * 4 * C);
  }
  std::vector<float> res_out(N * C), lnf(N * C), lnfm(N), lnfr(N), logits(static_cast<size_t>(N) * V);
  std::vector<float> rmax(N), tgt_logit(N), sumexp(N), losses(N), dloss(N, 1.0f / N);
  std::vector<int32_t> tok(N), tgt(N);
  for (int i = 0; i < N; ++i) tok[i] = (i * 31) % V, tgt[i] = (i * 17 + 5) % V;
  std::vector<float> dres(N * C), dtmp(N * C), dbig(N * 4 * C), dqkv(N * 3 * C), dln(N * C);

  std::map<std::string, double> t;
  std::vector<std::string> order;
  auto timed = [&](const char* name, const std::function<void()>& f) {
    const double t0 = now();
    f();
    if (std::find(order.begin(), order.end(), name) == order.end()) order.push_back(name);
    t[name] += now() - t0;
  };
  auto step = [&] {
    // ---- forward
    timed("embedding", [&] {
      cpu::embedding_forward(A[0].res_in.data(), tok.data(), wte.data(), N, C, 0, V);
      cpu::position_forward(A[0].res_in.data(), wpe.data(), B, T, C);
    });
    for (int l = 0; l < L; ++l) {
      Acts& a = A[l];
      Layer& p = P[l];
      timed("layernorm", [&] { cpu::layernorm_forward(a.ln1.data(), a.ln1m.data(), a.ln1r.data(), a.res_in.data(), p.ln1w.data(), p.ln1b.data(), N, C, 1e-5f); });
      timed("matmul", [&] { cpu::matmul_forward(a.qkv.data(), a.ln1.data(), p.wqkv.data(), p.bqkv.data(), N, C, 3 * C); });
      timed("attention", [&] { cpu::attention_forward(a.att.data(), a.lse.data(), a.qkv.data(), B, T, NH, NH, HD); });
      timed("matmul", [&] { cpu::matmul_forward(a.attproj.data(), a.att.data(), p.wproj.data(), p.bproj.data(), N, C, C); });
      timed("residual", [&] {
        std::memcpy(a.res_mid.data(), a.res_in.data(), sizeof(float) * N * C);
        cpu::add_inplace(a.res_mid.data(), a.attproj.data(), static_cast<size_t>(N) * C);
      });
      timed("layernorm", [&] { cpu::layernorm_forward(a.ln2.data(), a.ln2m.data(), a.ln2r.data(), a.res_mid.data(), p.ln2w.data(), p.ln2b.data(), N, C, 1e-5f); });
      timed("matmul", [&] { cpu::matmul_forward(a.fc.data(), a.ln2.data(), p.wfc.data(), p.bfc.data(), N, C, 4 * C); });
      timed("gelu", [&] { cpu::gelu_forward(a.gelu.data(), a.fc.data(), static_cast<size_t>(N) * 4 * C); });
      float* next = l + 1 < L ? A[l + 1].res_in.data() : res_out.data();
      timed("matmul", [&] { cpu::matmul_forward(next, a.gelu.data(), p.wfp.data(), p.bfp.data(), N, 4 * C, C); });
      timed("residual", [&] { cpu::add_inplace(next, a.res_mid.data(), static_cast<size_t>(N) * C); });
    }
    timed("layernorm", [&] { cpu::layernorm_forward(lnf.data(), lnfm.data(), lnfr.data(), res_out.data(), lnfw.data(), lnfb.data(), N, C, 1e-5f); });
    timed("matmul", [&] { cpu::matmul_forward(logits.data(), lnf.data(), wte.data(), nullptr, N, C, V); });
    timed("cross-entropy", [&] {
      cpu::ce_local_max(rmax.data(), logits.data(), N, V);
      cpu::ce_local_target(tgt_logit.data(), logits.data(), tgt.data(), N, V, 0);
      cpu::ce_local_exp_sum(sumexp.data(), logits.data(), rmax.data(), N, V);
      cpu::ce_losses(losses.data(), rmax.data(), sumexp.data(), tgt_logit.data(), tgt.data(), N);
      cpu::ce_backward_inplace(logits.data(), sumexp.data(), tgt.data(), dloss.data(), N, V, 0);
    });
    // ---- backward
    timed("matmul", [&] { cpu::matmul_backward(dln.data(), dwte.data(), nullptr, logits.data(), lnf.data(), wte.data(), N, C, V); });
    timed("layernorm", [&] {
      std::fill(dres.begin(), dres.end(), 0.0f);
      cpu::layernorm_backward(dres.data(), dlnfw.data(), dlnfb.data(), dln.data(), res_out.data(), lnfw.data(), lnfm.data(), lnfr.data(), N, C);
    });
    for (int l = L - 1; l >= 0; --l) {
      Acts& a = A[l];
      Layer& p = P[l];
      Layer& g = G[l];
      timed("matmul", [&] { cpu::matmul_backward(dbig.data(), g.wfp.data(), g.bfp.data(), dres.data(), a.gelu.data(), p.wfp.data(), N, 4 * C, C); });
      timed("gelu", [&] { cpu::gelu_backward(dbig.data(), a.fc.data(), dbig.data(), static_cast<size_t>(N) * 4 * C); });
      timed("matmul", [&] { cpu::matmul_backward(dln.data(), g.wfc.data(), g.bfc.data(), dbig.data(), a.ln2.data(), p.wfc.data(), N, C, 4 * C); });
      timed("layernorm", [&] { cpu::layernorm_backward(dres.data(), g.ln2w.data(), g.ln2b.data(), dln.data(), a.res_mid.data(), p.ln2w.data(), a.ln2m.data(), a.ln2r.data(), N, C); });
      timed("matmul", [&] { cpu::matmul_backward(dtmp.data(), g.wproj.data(), g.bproj.data(), dres.data(), a.att.data(), p.wproj.data(), N, C, C); });
      timed("attention", [&] { cpu::attention_backward(dqkv.data(), dtmp.data(), a.qkv.data(), a.att.data(), a.lse.data(), B, T, NH, NH, HD); });
      timed("matmul", [&] { cpu::matmul_backward(dln.data(), g.wqkv.data(), g.bqkv.data(), dqkv.data(), a.ln1.data(), p.wqkv.data(), N, C, 3 * C); });
      timed("layernorm", [&] { cpu::layernorm_backward(dres.data(), g.ln1w.data(), g.ln1b.data(), dln.data(), a.res_in.data(), p.ln1w.data(), a.ln1m.data(), a.ln1r.data(), N, C); });
    }
    timed("embedding", [&] {
      cpu::embedding_backward(dwte.data(), tok.data(), dres.data(), N, C, 0, V);
      cpu::position_backward(dwpe.data(), dres.data(), B, T, C);
    });
    // ---- optimizer (gradient norm + AdamW); m and v reuse the gradient buffers' shapes
    timed("adamw+norm", [&] {
      static std::vector<std::vector<float>> mstate, vstate;
      std::vector<std::pair<std::vector<float>*, std::vector<float>*>> pg;
      for (int l = 0; l < L; ++l)
        for (auto [pp, gg] : {std::pair{&P[l].wqkv, &G[l].wqkv}, std::pair{&P[l].wproj, &G[l].wproj},
                              std::pair{&P[l].wfc, &G[l].wfc}, std::pair{&P[l].wfp, &G[l].wfp},
                              std::pair{&P[l].bqkv, &G[l].bqkv}, std::pair{&P[l].bfc, &G[l].bfc}})
          pg.push_back({pp, gg});
      pg.push_back({&wte, &dwte});
      pg.push_back({&wpe, &dwpe});
      if (mstate.empty())
        for (auto& [pp, gg] : pg) mstate.emplace_back(pp->size(), 0.0f), vstate.emplace_back(pp->size(), 0.0f);
      double ss = 0.0;
      for (auto& [pp, gg] : pg) ss += cpu::sum_squares(gg->data(), gg->size());
      const float clip = static_cast<float>(1.0 / std::max(1.0, std::sqrt(ss)));
      for (size_t i = 0; i < pg.size(); ++i) {
        auto& [pp, gg] = pg[i];
        cpu::scale_inplace(gg->data(), clip, gg->size());
        cpu::adamw_update(pp->data(), gg->data(), mstate[i].data(), vstate[i].data(), pp->size(),
                          1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 1);
        std::fill(gg->begin(), gg->end(), 0.0f);
      }
    });
  };
  step();  // warm-up
  t.clear();
  order.clear();
  const int reps = 5;
  double best = 1e30;
  std::map<std::string, double> best_t;
  for (int r = 0; r < reps; ++r) {
    t.clear();
    const double t0 = now();
    step();
    const double dt = now() - t0;
    if (dt < best) best = dt, best_t = t;
  }
  // GEMM FLOPs of a step: 6 * (weights) * tokens for the linears (fwd + 2 bwd), attention fwd+bwd.
  const double lin_params = L * (3.0 * C * C + C * C + 4.0 * C * C + 4.0 * C * C) + static_cast<double>(V) * C;
  const double lin_flops = 6.0 * lin_params * N;
  const double attn_flops = L * 3.5 * 2.0 * 2.0 * B * NH * (T * T / 2.0) * HD;
  std::printf("gpt-tiny step (B=%d T=%d C=%d L=%d NH=%d V=%d), %d thread(s), best of %d: %.1f ms\n",
              B, T, C, L, NH, V, cpu::num_threads(), reps, best * 1e3);
  for (const auto& name : order)
    std::printf("  %-14s %8.2f ms  %5.1f%%\n", name.c_str(), best_t[name] * 1e3, 100.0 * best_t[name] / best);
  std::printf("  GEMM+attention FLOPs %.2f GFLOP -> %.1f GFLOP/s overall", (lin_flops + attn_flops) / 1e9,
              (lin_flops + attn_flops) / best / 1e9);
  if (peak_gflops > 0.0) std::printf(" = %.0f%% of sgemm peak (%.1f)", 100.0 * (lin_flops + attn_flops) / best / 1e9 / peak_gflops, peak_gflops);
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string what = argc > 1 ? argv[1] : "all";
  const int threads = argc > 2 ? std::atoi(argv[2]) : 1;
  cpu::set_num_threads(threads);
  Eigen::setNbThreads(threads);
  std::printf("sgemm backend in lossytp: %s; OpenMP threads %d, Eigen threads %d\n\n",
              cpu::gemm_backend_name(), omp_get_max_threads(), Eigen::nbThreads());
  if (what == "gemm" || what == "all") bench_gemm();
  if (what == "attn" || what == "all") bench_attention();
  if (what == "step" || what == "all") bench_step();
  return 0;
}
