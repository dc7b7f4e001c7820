// Semigroup attention (generator step, models/semigroup_attention.cpp): the CPU kernel against
// a double-precision reference and finite differences, the part against the fork's test
// vectors (tests/data/semigroup_v4_vectors.json, from ../shared/data) and finite differences,
// TP=2 against TP=1, and the flags' bad input.
#include <catch2/catch.hpp>

#include <CLI/CLI.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>
#include <vector>

#include "common/semigroup_checks.h"
#include "common/run_virtual.h"
#include "common/small_config.h"
#include "experiments/train_config.h"
#include "kernels/cpu/ops.h"
#include "models/gpt.h"
#include "models/layer_spec.h"
#include "sim/comm.h"
#include "sim/local_backend.h"

using namespace lossytp;
using namespace lossytp::testing;

namespace {

// y = (1 - t) v + t softmax(q k^T / sqrt(HD) - c |i - j|, causal) v, in double; qkv [B,T,3,NH,HD].
std::vector<double> reference(const std::vector<double>& qkv, int B, int T, int NH, int HD, double t, double c) {
  const int C3 = 3 * NH * HD;
  std::vector<double> y(static_cast<size_t>(B) * T * NH * HD);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int i = 0; i < T; ++i) {
        auto at = [&](int tok, int part, int e) { return qkv[(static_cast<size_t>(b) * T + tok) * C3 + part * NH * HD + h * HD + e]; };
        std::vector<double> s(i + 1);
        double m = -1e300, l = 0;
        for (int j = 0; j <= i; ++j) {
          double d = 0;
          for (int e = 0; e < HD; ++e) d += at(i, 0, e) * at(j, 1, e);
          s[j] = d / std::sqrt(static_cast<double>(HD)) - c * (i - j);
          m = std::max(m, s[j]);
        }
        for (int j = 0; j <= i; ++j) l += (s[j] = std::exp(s[j] - m));
        for (int e = 0; e < HD; ++e) {
          double o = 0;
          for (int j = 0; j <= i; ++j) o += s[j] / l * at(j, 2, e);
          y[((static_cast<size_t>(b) * T + i) * NH + h) * HD + e] = (1 - t) * at(i, 2, e) + t * o;
        }
      }
  return y;
}

}  // namespace

TEST_CASE("semigroup kernel: forward matches a double reference; backward matches finite differences", "[semigroup]") {
  const int B = 2, T = 70, NH = 2, HD = 8;  // T > one key tile of 64
  const float t = 0.7f, c = 0.05f;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> qkv(static_cast<size_t>(B) * T * 3 * NH * HD), w(static_cast<size_t>(B) * T * NH * HD);
  for (float& x : qkv) x = nd(rng);
  for (float& x : w) x = nd(rng);
  std::vector<float> y(w.size()), o(w.size()), lse(static_cast<size_t>(B) * NH * T);
  cpu::semigroup_attention_forward(y.data(), o.data(), lse.data(), qkv.data(), B, T, NH, HD, t, c);
  std::vector<double> qd(qkv.begin(), qkv.end()), wd(w.begin(), w.end());
  const auto ref = reference(qd, B, T, NH, HD, t, c);
  double worst = 0;
  for (size_t i = 0; i < y.size(); ++i) worst = std::max(worst, std::abs(y[i] - ref[i]));
  CHECK(worst < 2e-5);

  // L = sum w . y: the kernel's gradients against central differences of the double reference.
  std::vector<float> dqkv(qkv.size());
  double dt = 0, dc = 0;
  cpu::semigroup_attention_backward(dqkv.data(), &dt, &dc, w.data(), qkv.data(), o.data(), lse.data(), B, T, NH,
                                    HD, t, c);
  const double h = 1e-6;
  auto fd_t = (dot(reference(qd, B, T, NH, HD, t + h, c), wd) - dot(reference(qd, B, T, NH, HD, t - h, c), wd)) / (2 * h);
  auto fd_c = (dot(reference(qd, B, T, NH, HD, t, c + h), wd) - dot(reference(qd, B, T, NH, HD, t, c - h), wd)) / (2 * h);
  CHECK(dt == Approx(fd_t).epsilon(1e-4));
  CHECK(dc == Approx(fd_c).epsilon(1e-4));
  std::uniform_int_distribution<size_t> pick(0, qkv.size() - 1);
  for (int k = 0; k < 40; ++k) {
    const size_t i = pick(rng);
    auto p = qd, m = qd;
    p[i] += h;
    m[i] -= h;
    const double fd = (dot(reference(p, B, T, NH, HD, t, c), wd) - dot(reference(m, B, T, NH, HD, t, c), wd)) / (2 * h);
    CHECK(dqkv[i] == Approx(fd).epsilon(1e-3).margin(1e-4));
  }
}

namespace {
struct Part {
  ModelConfig cfg;
  ParamStore store{0, 1};
  std::unique_ptr<BlockPart> part;
  LocalWorld world{1};
  Comm comm{world.group("tp", {0}, 0), "tp", nullptr};
  Workspace ws{Device::CPU};
  explicit Part(int C, int H) {
    cfg.hidden_size = C;
    cfg.num_attention_heads = H;
    cfg.num_layers = 2;
    cfg.add_bias_linear = false;  // the fork's module has no biases
    cfg.attention = "semigroup";
    part = attention_factory("semigroup")(PartContext{store, cfg, TPOptions{}, 0, "layer0.attn", nullptr});
    store.allocate();
    store.init(1);
  }
  float& value(const std::string& n) { return *store.value(param(store, n)); }
  float* values(const std::string& n) { return store.value(param(store, n)); }
  float grad(const std::string& n) { return *store.grad(param(store, n)); }
};
}  // namespace

TEST_CASE("semigroup part: reproduces the fork's generator-step test vectors", "[semigroup]") {
  const auto path = std::filesystem::path(__FILE__).parent_path() / ".." / "data" / "semigroup_v4_vectors.json";
  std::ifstream f(path);
  REQUIRE(f.good());
  const auto j = nlohmann::json::parse(f);
  const int B = j["B"], T = j["T"], C = j["C"], H = j["H"];
  const auto& v4 = j["v4_HEAD"];
  Part p(C, H);
  // init values of the shared scalars, as the fork initialises them
  CHECK(p.value("layer0.attn.shared.dt_logit") == Approx(6.906755).epsilon(1e-6));
  CHECK(p.value("layer0.attn.shared.kappa_uncon") == -20.0f);
  CHECK(p.value("layer0.attn.shared.xi_uncon") == 32.0f);
  const auto wqkv = det(3 * C * C, 1.1, 0.3), wproj = det(C * C, 2.2, 0.3);
  std::copy(wqkv.begin(), wqkv.end(), p.values("layer0.attn.qkv.weight"));  // block-major [Q|K|V] rows
  std::copy(wproj.begin(), wproj.end(), p.values("layer0.attn.proj.weight"));
  p.value("layer0.attn.shared.dt_logit") = v4["dt_logit"].get<float>();
  p.value("layer0.attn.shared.kappa_uncon") = v4["kappa_uncon"].get<float>();
  p.value("layer0.attn.shared.xi_uncon") = v4["xi_uncon"].get<float>();
  const auto x = det(static_cast<size_t>(B) * T * C, j["x"]["seed"].get<double>());
  std::vector<float> out(x.size());
  p.part->forward(out.data(), x.data(), B, T, p.comm, p.ws);
  double worst = 0;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int e = 0; e < C; ++e)
        worst = std::max(worst, std::abs(out[(static_cast<size_t>(b) * T + t) * C + e] - v4["y"][b][t][e].get<double>()));
  INFO("worst absolute difference " << worst);
  CHECK(worst < 2e-6);  // fp32 against the fork's float64 outputs (|y| <= 0.28)
}

TEST_CASE("semigroup part: gradients of every parameter and the input match finite differences", "[semigroup]") {
  const int B = 2, T = 7, C = 16, H = 2;
  Part p(C, H);
  const auto wqkv = det(3 * C * C, 1.1, 0.3), wproj = det(C * C, 2.2, 0.3);
  std::copy(wqkv.begin(), wqkv.end(), p.values("layer0.attn.qkv.weight"));
  std::copy(wproj.begin(), wproj.end(), p.values("layer0.attn.proj.weight"));
  p.value("layer0.attn.shared.dt_logit") = 0.4f;
  p.value("layer0.attn.shared.kappa_uncon") = 0.2f;
  p.value("layer0.attn.shared.xi_uncon") = 1.5f;
  auto x = det(static_cast<size_t>(B) * T * C, 0.3);
  const auto w = det(x.size(), 9.1);
  std::vector<float> out(x.size()), dx(x.size());
  auto loss = [&] {
    p.part->forward(out.data(), x.data(), B, T, p.comm, p.ws);
    double s = 0;
    for (size_t i = 0; i < out.size(); ++i) s += static_cast<double>(out[i]) * w[i];
    return s;
  };
  loss();
  p.part->backward(dx.data(), w.data(), x.data(), B, T, p.comm, p.ws);
  auto fd = [&](float& v) {
    const float h = 1e-2f, v0 = v;
    v = v0 + h;
    const double a = loss();
    v = v0 - h;
    const double b = loss();
    v = v0;
    return (a - b) / (2 * h);
  };
  for (const char* n : {"layer0.attn.shared.dt_logit", "layer0.attn.shared.kappa_uncon"}) {
    INFO(n);
    CHECK(p.grad(n) == Approx(fd(p.value(n))).epsilon(2e-3).margin(1e-4));
  }
  CHECK(p.grad("layer0.attn.shared.xi_uncon") == 0.0f);  // frozen
  for (const char* n : {"layer0.attn.qkv.weight", "layer0.attn.proj.weight"}) {
    const float* g = p.store.grad(param(p.store, n));
    float* v = p.values(n);
    const int count = std::string(n).find("qkv") != std::string::npos ? 3 * C * C : C * C;
    for (int i = 0; i < count; i += 37) {
      INFO(n << "[" << i << "]");
      CHECK(g[i] == Approx(fd(v[i])).epsilon(2e-3).margin(2e-4));
    }
  }
  for (size_t i = 0; i < x.size(); i += 13) {
    INFO("x[" << i << "]");
    CHECK(dx[i] == Approx(fd(x[i])).epsilon(2e-3).margin(2e-4));
  }
}

TEST_CASE("semigroup part: at TP=2 and TP=4 the output, input gradient and shared gradients equal TP=1's", "[semigroup]") {
  // The shared scalars away from their init, where their gradients are not negligible: a
  // missing all-reduce at "layer0.attn.shared.grad" would halve them.
  const int B = 2, T = 9, C = 16, H = 4;
  ModelConfig cfg;
  cfg.hidden_size = C;
  cfg.num_attention_heads = H;
  cfg.num_layers = 2;
  cfg.attention = "semigroup";
  const auto x = det(static_cast<size_t>(B) * T * C, 0.3);
  const auto w = det(x.size(), 9.1);
  struct Result {
    std::vector<float> out, dx;
    float g_theta = 0, g_kappa = 0;
    double shared_site = 0;
  };
  auto run = [&](int tp) {
    LocalWorld world(tp);
    std::vector<int> members;
    for (int r = 0; r < tp; ++r) members.push_back(r);
    std::vector<Result> res(tp);
    std::vector<std::thread> threads;
    for (int r = 0; r < tp; ++r)
      threads.emplace_back([&, r] {
        ParamStore store(r, tp);
        auto part = attention_factory("semigroup")(PartContext{store, cfg, TPOptions{}, 0, "layer0.attn", nullptr});
        store.allocate();
        store.init(11);
        *store.value(param(store, "layer0.attn.shared.dt_logit")) = 0.4f;
        *store.value(param(store, "layer0.attn.shared.kappa_uncon")) = 0.2f;
        *store.value(param(store, "layer0.attn.shared.xi_uncon")) = 1.5f;
        Comm comm(world.group("tp", members, r), "tp", nullptr);
        Workspace ws(Device::CPU);
        Result& o = res[r];
        o.out.resize(x.size());
        o.dx.resize(x.size());
        part->forward(o.out.data(), x.data(), B, T, comm, ws);
        part->backward(o.dx.data(), w.data(), x.data(), B, T, comm, ws);
        o.g_theta = *store.grad(param(store, "layer0.attn.shared.dt_logit"));
        o.g_kappa = *store.grad(param(store, "layer0.attn.shared.kappa_uncon"));
        SiteElements e;
        part->comm_elements(B * T, e);
        o.shared_site = e["layer0.attn.shared.grad"];
      });
    for (auto& t : threads) t.join();
    return res;
  };
  const auto one = run(1), two = run(2), four = run(4);
  CHECK(one[0].shared_site == 2);
  CHECK(std::abs(one[0].g_theta) > 1e-5);
  CHECK(std::abs(one[0].g_kappa) > 1e-5);
  std::vector<Result> many = two;
  many.insert(many.end(), four.begin(), four.end());
  for (const Result& r : many) {
    CHECK(r.g_theta == Approx(one[0].g_theta).epsilon(1e-5));
    CHECK(r.g_kappa == Approx(one[0].g_kappa).epsilon(1e-5));
    for (size_t i = 0; i < x.size(); ++i) {
      CHECK(r.out[i] == Approx(one[0].out[i]).margin(1e-6));
      CHECK(r.dx[i] == Approx(one[0].dx[i]).margin(1e-6));
    }
  }
}

TEST_CASE("semigroup: TP=2 and TP=4 match TP=1 over 20 iterations, alone and in a hybrid pattern", "[semigroup][virtual]") {
  auto cfg = [](int tp) {
    TrainConfig c = testing::small_config(tp, 1, 4, 8, 20);
    c.comm_timeout = 60;
    c.model.attention = "semigroup";
    return c;
  };
  const auto ref = testing::run_virtual(cfg(1), "sg-ref").train_loss;
  REQUIRE(ref.size() == 20);
  CHECK(ref.back() < ref.front());  // it trains
  CHECK(testing::worst_relative(testing::run_virtual(cfg(2), "sg-tp2").train_loss, ref) <= 1e-5);
  CHECK(testing::worst_relative(testing::run_virtual(cfg(4), "sg-tp4").train_loss, ref) <= 1e-5);
  auto hybrid = [&](int tp) {
    TrainConfig c = cfg(tp);
    c.model.attention_pattern = {"semigroup", "softmax"};
    return c;
  };
  const auto href = testing::run_virtual(hybrid(1), "sgh-ref").train_loss;
  CHECK(testing::worst_relative(testing::run_virtual(hybrid(2), "sgh-tp2").train_loss, href) <= 1e-5);
  CHECK(testing::worst_relative(testing::run_virtual(hybrid(4), "sgh-tp4").train_loss, href) <= 1e-5);
  CHECK(testing::worst_relative(href, ref) > 0);  // the pattern changes the model
}

TEST_CASE("semigroup: unknown names in --attention or --attention-pattern are one clear error", "[semigroup]") {
  auto parse = [](std::vector<std::string> args) {
    CLI::App app;
    TrainOptions o;
    add_train_options(app, o);
    std::vector<std::string> rev(args.rbegin(), args.rend());
    app.parse(rev);
    return finish_train_config(o, 1);
  };
  CHECK_NOTHROW(parse({"--attention-pattern", "semigroup,softmax"}));
  CHECK(parse({"--attention-pattern", "semigroup,softmax,semigroup"}).model.attention_of(2) == "semigroup");
  CHECK_THROWS_WITH(parse({"--attention", "semigrup"}), Catch::Contains("semigrup") && Catch::Contains("semigroup"));
  CHECK_THROWS_WITH(parse({"--attention-pattern", "semigroup,mlp"}),
                    Catch::Contains("--attention-pattern") && Catch::Contains("'mlp'"));
  ModelConfig m;
  m.attention_pattern = {"softmax", "nope"};
  CHECK_THROWS_WITH(GPTModel(m, 0, 1, TPOptions{}, Compute{}, false), Catch::Contains("nope"));
}
