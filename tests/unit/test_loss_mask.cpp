// Loss masks end to end (supervised fine-tuning): a masked target gives no loss and no
// gradient, the trainer's loss is the mean over the counted targets of the global batch (at
// TP=1 and TP=2), and the gradient of a batch masked down to one target is the gradient of that
// one token's loss (finite differences of the unmasked per-token loss).
#include <catch2/catch.hpp>

#include <cmath>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common/run_virtual.h"
#include "common/small_config.h"
#include "common/temp_dir.h"
#include "experiments/dataset.h"
#include "models/gpt.h"
#include "sim/layout.h"
#include "sim/local_backend.h"

using namespace lossytp;

namespace {

constexpr int kT = 32;  // small_config's seq_length

void write_llmc(const std::string& path, const std::vector<int32_t>& toks) {
  std::vector<int32_t> h(256, 0);
  h[0] = 20240520;
  h[1] = 1;
  h[2] = static_cast<int32_t>(toks.size());
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(h.data()), 1024);
  for (int32_t t : toks) {
    const uint16_t u = static_cast<uint16_t>(t);
    out.write(reinterpret_cast<const char*>(&u), 2);
  }
}

void write_mask(const std::string& path, const std::vector<uint8_t>& m) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(m.data()), static_cast<std::streamsize>(m.size()));
}

std::vector<int32_t> random_tokens(size_t n, int vocab, unsigned seed) {
  std::mt19937 g(seed);
  std::vector<int32_t> t(n);
  for (auto& v : t) v = static_cast<int32_t>(g() % static_cast<unsigned>(vocab));
  return t;
}

// A run whose train and eval files hold one sequence (seq-length + 1 tokens), so every sample
// of every batch is that sequence: the loss of iteration 1 is the masked mean over it.
TrainConfig one_sequence_run(const testing::TempDir& d, const std::vector<int32_t>& toks,
                             const std::vector<uint8_t>& mask, int tp, int iters) {
  write_llmc(d.file("train.bin"), toks);
  write_llmc(d.file("val.bin"), toks);
  write_mask(d.file("train.mask"), mask);
  write_mask(d.file("val.mask"), mask);
  TrainConfig c = testing::small_config(tp, 1, 2, 4, iters);
  c.data.path = d.file("train.bin");
  c.data.eval_path = d.file("val.bin");
  c.data.loss_mask = d.file("train.mask");
  c.data.eval_loss_mask = d.file("val.mask");
  c.eval_interval = 1;
  c.eval_iters = 1;
  return c;
}

struct OneRank {
  LocalWorld world{1};
  std::unique_ptr<Groups> groups = make_local_groups(world, Layout::make(1, 0, 1, 1));
  Comm& tp() { return *groups->tp; }
};

}  // namespace

TEST_CASE("masked loss is the mean of the per-token losses over the counted targets", "[data][loss_mask]") {
  testing::TempDir d("loss_mask");
  const std::vector<int32_t> toks = random_tokens(kT + 1, 256, 5);
  std::vector<uint8_t> mask(kT + 1, 0);
  for (int i = 1; i <= kT; ++i) mask[i] = (i % 3 == 0 || i > 25);  // targets y[t] = toks[t+1]

  // Reference: the unmasked per-token losses of the initial model on the same sequence.
  const TrainConfig base = one_sequence_run(d, toks, mask, 1, 1);
  OneRank one;
  GPTModel model(base.model, 0, 1, {}, base.compute());
  model.init(base.seed);
  std::vector<float> per_token(kT);
  model.step(toks.data(), toks.data() + 1, 1, kT, one.tp(), false, 0.0f, per_token.data());
  double sum = 0;
  int counted = 0;
  for (int t = 0; t < kT; ++t)
    if (mask[t + 1]) sum += per_token[t], ++counted;
  const double want = sum / counted;

  // The masked model step: ignored targets add nothing to the sum.
  std::vector<int32_t> y(toks.begin() + 1, toks.end());
  for (int t = 0; t < kT; ++t)
    if (!mask[t + 1]) y[t] = -1;
  std::vector<float> masked_tok(kT);
  const double masked_sum = model.step(toks.data(), y.data(), 1, kT, one.tp(), false, 0.0f, masked_tok.data());
  CHECK(std::abs(masked_sum - sum) < 1e-5 * sum);
  for (int t = 0; t < kT; ++t)
    if (!mask[t + 1]) CHECK(masked_tok[t] == 0.0f);

  for (int tp : {1, 2}) {
    INFO("tp " << tp);
    const TrainResult r = testing::run_virtual(one_sequence_run(d, toks, mask, tp, 1), "mask_mean");
    REQUIRE(r.train_loss.size() == 1);
    CHECK(std::abs(r.train_loss[0] - want) < 1e-5 * want);
    REQUIRE(r.eval_loss.size() == 1);
    CHECK(std::isfinite(r.eval_loss[0]));
  }
  // Without a mask the run's first loss is the plain mean (the unmasked path is unchanged).
  TrainConfig plain = one_sequence_run(d, toks, mask, 1, 1);
  plain.data.loss_mask.clear();
  plain.data.eval_loss_mask.clear();
  double all = 0;
  for (float v : per_token) all += v;
  const TrainResult r = testing::run_virtual(plain, "mask_plain");
  CHECK(std::abs(r.train_loss[0] - all / kT) < 1e-5 * all / kT);
}

TEST_CASE("masking all but one target gives the gradient of that target alone", "[data][loss_mask]") {
  testing::TempDir d("loss_mask");
  const std::vector<int32_t> toks = random_tokens(kT + 1, 256, 9);
  const int k = 20;  // the one counted target: y[k] = toks[k+1]
  const TrainConfig cfg = one_sequence_run(d, toks, std::vector<uint8_t>(kT + 1, 1), 1, 1);
  OneRank one;
  GPTModel model(cfg.model, 0, 1, {}, cfg.compute());
  model.init(cfg.seed);
  ParamStore& p = model.params();
  const size_t n = p.numel();

  std::vector<int32_t> y(kT, -1);
  y[k] = toks[k + 1];
  p.grads().zero();
  model.step(toks.data(), y.data(), 1, kT, one.tp(), true, 1.0f);
  const std::vector<float> g(p.grads().data(), p.grads().data() + n);
  p.grads().zero();
  model.step(toks.data(), toks.data() + 1, 1, kT, one.tp(), true, 1.0f);  // every target
  const std::vector<float> g_all(p.grads().data(), p.grads().data() + n);

  // L(theta) = the unmasked per-token loss at k, by central differences along a direction.
  std::vector<float> tl(kT);
  auto L = [&](const std::vector<float>& dir, double eps) {
    std::vector<float> saved(p.values().data(), p.values().data() + n);
    double out[2];
    for (int s = 0; s < 2; ++s) {
      for (size_t i = 0; i < n; ++i) p.values().data()[i] = saved[i] + static_cast<float>((s ? -eps : eps) * dir[i]);
      model.step(toks.data(), toks.data() + 1, 1, kT, one.tp(), false, 0.0f, tl.data());
      out[s] = tl[k];
    }
    std::copy(saved.begin(), saved.end(), p.values().data());
    return (out[0] - out[1]) / (2 * eps);
  };
  auto unit = [](std::vector<float> v) {
    double s = 0;
    for (float x : v) s += static_cast<double>(x) * x;
    for (float& x : v) x = static_cast<float>(x / std::sqrt(s));
    return v;
  };
  auto dot = [&](const std::vector<float>& a, const std::vector<float>& b) {
    double s = 0;
    for (size_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
    return s;
  };
  for (const auto& dir : {unit(g), unit(g_all)}) {
    const double fd = L(dir, 2e-3), an = dot(g, dir), other = dot(g_all, dir);
    INFO("finite difference " << fd << ", masked gradient " << an << ", unmasked " << other);
    CHECK(std::abs(fd - an) < 5e-3 * std::abs(an) + 5e-4);
    CHECK(std::abs(other - an) > 0.1 * std::abs(an));  // the prompt targets would change it
  }

  // Training: the tokens after the one target only feed masked targets, so changing them
  // changes nothing.
  std::vector<uint8_t> mask(kT + 1, 0);
  mask[k + 1] = 1;
  std::vector<int32_t> other = toks;
  for (int i = k + 2; i <= kT; ++i) other[i] = (other[i] + 17) % 256;
  const TrainResult a = testing::run_virtual(one_sequence_run(d, toks, mask, 1, 4), "mask_one_a");
  const TrainResult b = testing::run_virtual(one_sequence_run(d, other, mask, 1, 4), "mask_one_b");
  CHECK(testing::worst_relative(a.train_loss, b.train_loss) < 1e-6);
  CHECK(std::abs(a.train_loss[0] - std::log(256.0)) < 1.0);  // a real loss, near uniform at init
}

TEST_CASE("a global batch with no counted target trains nothing and does not diverge", "[data][loss_mask]") {
  testing::TempDir d("loss_mask");
  const std::vector<int32_t> toks = random_tokens(400, 256, 13);
  std::vector<uint8_t> mask(400, 0);
  mask[1] = 1;    // train split: the first window's first target only
  mask[390] = 1;  // eval tail
  write_llmc(d.file("t.bin"), toks);
  write_mask(d.file("t.mask"), mask);
  TrainConfig c = testing::small_config(1, 1, 1, 1, 6);
  c.data.path = d.file("t.bin");
  c.data.loss_mask = d.file("t.mask");
  c.data.eval_fraction = 0.1;
  c.eval_iters = 1;
  const TrainResult r = testing::run_virtual(c, "mask_empty");
  CHECK(r.status == "completed");
  REQUIRE(r.train_loss.size() == 6);
  int empty = 0;
  for (double l : r.train_loss) empty += std::isnan(l);
  CHECK(empty >= 5);  // almost every window misses the single target
}
