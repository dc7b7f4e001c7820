// Activation recompute (--recompute-granularity/-method/-num-layers): full (uniform and block,
// several unit sizes) and selective reproduce the run without recompute bit for bit over 20
// iterations (losses and final parameters), GPT-2 and Llama blocks, TP=1 and TP=2 on virtual
// ranks, exact, under lossy ring networks and CAAT; the recomputed forward replays its
// collectives (sim/comm.h CollectiveTape), so the /comm/ counters do not change either.
#include <catch2/catch.hpp>

#include <cstring>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/run_virtual.h"
#include "common/small_config.h"
#include "experiments/train_config.h"
#include "models/adamw.h"
#include "models/gpt.h"
#include "netmodels/netmodel.h"
#include "sim/comm.h"
#include "sim/local_backend.h"

using namespace lossytp;

namespace {

struct Outcome {
  std::vector<double> losses;
  std::vector<float> params;
  std::map<std::string, SiteCounters> sites;
  std::string error;
};

RecomputeOptions rc(const std::string& granularity, const std::string& method = "", int n = 1) {
  RecomputeOptions r;
  r.granularity = granularity;
  r.method = method;
  r.num_layers = n;
  return r;
}

std::string describe(const RecomputeOptions& r) {
  return r.granularity.empty() ? "none" : r.granularity + "/" + r.method + "/" + std::to_string(r.num_layers);
}

// 20 AdamW iterations of one micro-batch on `tp` virtual ranks; rank 0's outcome.
Outcome train(const ModelConfig& m, int tp, const std::string& net, const RecomputeOptions& r,
              bool sp = false, int iters = 20) {
  LocalWorld world(tp);
  std::vector<int> members;
  for (int i = 0; i < tp; ++i) members.push_back(i);
  std::vector<Outcome> out(tp);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < tp; ++rank)
    threads.emplace_back([&, rank] {
      try {
        auto stats = std::make_shared<CommStats>();
        Comm comm(world.group("tp", members, rank), "tp", stats);
        auto spec = std::make_shared<const net::NetSpec>(net::parse_net_spec(net));
        comm.set_network(spec, 99);
        TPOptions opt;
        opt.caat = spec->caat;
        opt.caat_p = spec->caat_p;
        opt.sequence_parallel = sp;
        GPTModel model(m, rank, tp, opt);
        model.set_recompute(r);
        model.init(5);
        AdamW adam(model.params(), AdamWConfig{});
        const int B = 2, T = m.seq_length, N = B * T;
        std::mt19937 rng(11);  // the same tokens on every rank
        std::vector<int32_t> x(N), y(N);
        for (int it = 0; it < iters; ++it) {
          for (int i = 0; i < N; ++i) x[i] = static_cast<int32_t>(rng() % m.vocab_size);
          for (int i = 0; i < N; ++i) y[i] = static_cast<int32_t>(rng() % m.vocab_size);
          comm.begin_step(it);
          model.params().grads().zero();
          out[rank].losses.push_back(model.step(x.data(), y.data(), B, T, comm, true, 1.0f / N));
          model.reduce_partial_grads(comm);
          adam.step(3e-3f);
        }
        const Tensor& v = model.params().values();
        out[rank].params.assign(v.data(), v.data() + v.numel());
        out[rank].sites = stats->sites();
      } catch (const std::exception& e) {
        out[rank].error = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const Outcome& o : out) REQUIRE(o.error == "");
  return out[0];
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

bool same_counters(const std::map<std::string, SiteCounters>& a, const std::map<std::string, SiteCounters>& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [site, c] : a) {
    auto it = b.find(site);
    if (it == b.end()) return false;
    const SiteCounters& d = it->second;
    if (c.calls != d.calls || c.messages != d.messages || c.bytes != d.bytes || c.packets != d.packets ||
        c.packets_exposed != d.packets_exposed || c.packets_lost != d.packets_lost ||
        c.retransmissions != d.retransmissions || c.elements_filled != d.elements_filled ||
        c.sim_seconds != d.sim_seconds)
      return false;
  }
  return true;
}

ModelConfig gpt2() {
  ModelConfig m = testing::small_config(1, 1, 2, 2, 1).model;
  m.num_layers = 4;
  return m;
}

ModelConfig llama() {
  ModelConfig m = testing::small_llama_config(1, 1, 2, 2, 1).model;
  m.num_layers = 4;
  return m;
}

// Every variant against no recompute: same losses, parameters and counters, bit for bit.
void check_variants(const ModelConfig& m, int tp, const std::string& net,
                    const std::vector<RecomputeOptions>& variants, bool lossy, bool sp = false) {
  const Outcome ref = train(m, tp, net, RecomputeOptions{}, sp);
  for (double l : ref.losses) REQUIRE(std::isfinite(l));
  if (lossy) {
    int64_t lost = 0;
    for (const auto& [site, c] : ref.sites) lost += c.packets_lost;
    CHECK(lost > 0);
  }
  for (const RecomputeOptions& r : variants) {
    INFO("tp " << tp << (sp ? " sp" : "") << ", net " << net << ", recompute " << describe(r));
    const Outcome o = train(m, tp, net, r, sp);
    CHECK(o.losses == ref.losses);
    CHECK(same_bits(o.params, ref.params));
    CHECK(same_counters(o.sites, ref.sites));
  }
}

}  // namespace

TEST_CASE("recompute: GPT-2 blocks at TP=1 reproduce no recompute bit for bit", "[recompute]") {
  check_variants(gpt2(), 1, "exact",
                 {rc("full", "uniform", 1), rc("full", "uniform", 3), rc("full", "block", 2), rc("selective")},
                 false);
}

TEST_CASE("recompute: Llama blocks at TP=1 reproduce no recompute bit for bit", "[recompute]") {
  check_variants(llama(), 1, "exact", {rc("full", "uniform", 4), rc("full", "block", 1), rc("selective")},
                 false);
}

TEST_CASE("recompute: TP=2 exact and under lossy ring networks, bit for bit, same counters", "[recompute]") {
  check_variants(gpt2(), 2, "exact", {rc("full", "uniform", 2), rc("selective")}, false);
  check_variants(gpt2(), 2, "drop:rate=0.02,mode=ring",
                 {rc("full", "uniform", 1), rc("full", "uniform", 3), rc("full", "block", 3), rc("selective")},
                 true);
  check_variants(llama(), 2, "ge:preset=one,mode=ring,packet=16",
                 {rc("full", "uniform", 2), rc("full", "block", 1), rc("selective")}, true);
}

TEST_CASE("recompute: TP=2 under CAAT (partial reduce) and endpoint losses, bit for bit", "[recompute]") {
  check_variants(gpt2(), 2, "caat:p=0.5", {rc("full", "uniform", 2), rc("full", "block", 4), rc("selective")},
                 false);
  check_variants(llama(), 2, "caat:p=0.5+drop:rate=0.02,mode=ring",
                 {rc("full", "uniform", 3), rc("selective")}, true);
  check_variants(gpt2(), 2, "drop:rate=0.05,mode=endpoint,fill=stale", {rc("full", "uniform", 2)}, true);
}

TEST_CASE("recompute: with --sequence-parallel (gathers and reduce-scatters on the tape)", "[recompute][sp]") {
  check_variants(gpt2(), 2, "drop:rate=0.02,mode=ring", {rc("full", "uniform", 2), rc("selective")}, true, true);
  check_variants(llama(), 2, "exact", {rc("full", "block", 2), rc("full", "uniform", 4)}, false, true);
}

TEST_CASE("recompute: the trainer at TP=2 x DP=2 (with evaluations) gives the same losses", "[recompute]") {
  TrainConfig c = testing::small_config(2, 2, 2, 8, 20);
  c.comm_timeout = 60;
  c.model.num_layers = 3;
  c.net = "ge:preset=one,mode=ring,packet=16";
  const TrainResult ref = testing::run_virtual(c, "rc-none");
  c.recompute = rc("full", "uniform", 2);
  const TrainResult full = testing::run_virtual(c, "rc-full");
  c.recompute = rc("selective");
  const TrainResult sel = testing::run_virtual(c, "rc-sel");
  CHECK(full.train_loss == ref.train_loss);
  CHECK(full.eval_loss == ref.eval_loss);
  CHECK(sel.train_loss == ref.train_loss);
  CHECK(sel.eval_loss == ref.eval_loss);
}

TEST_CASE("recompute: the memory estimate drops", "[recompute]") {
  for (const ModelConfig& m : {gpt2(), llama()})
    for (int tp : {1, 2}) {
      GPTModel none(m, 0, tp, {}, {}, false), full(m, 0, tp, {}, {}, false), sel(m, 0, tp, {}, {}, false),
          block(m, 0, tp, {}, {}, false);
      full.set_recompute(rc("full", "uniform", 1));
      sel.set_recompute(rc("selective"));
      block.set_recompute(rc("full", "block", 2));
      const double a0 = none.memory_estimate(8, m.seq_length).activations;
      const double af = full.memory_estimate(8, m.seq_length).activations;
      const double ab = block.memory_estimate(8, m.seq_length).activations;
      const double as = sel.memory_estimate(8, m.seq_length).activations;
      INFO("tp " << tp);
      CHECK(af < ab);
      CHECK(ab < a0);
      CHECK(as < a0);
      CHECK(none.memory_estimate(8, m.seq_length).weights == full.memory_estimate(8, m.seq_length).weights);
    }
}

TEST_CASE("recompute: a replay answers from the tape, counts nothing, and refuses a different call", "[recompute][comm]") {
  const int p = 2;
  LocalWorld world(p);
  std::vector<std::string> errors(p);
  std::vector<std::vector<float>> replayed(p), gathered(p);
  std::vector<int64_t> calls_before(p), calls_after(p);
  std::vector<std::thread> threads;
  for (int r = 0; r < p; ++r)
    threads.emplace_back([&, r] {
      Comm comm(world.group("t", {0, 1}, r), "tp", nullptr);
      comm.set_network(std::make_shared<const net::NetSpec>(net::parse_net_spec("drop:rate=0.3,mode=ring,packet=16")), 3);
      CollectiveTape tape;
      std::vector<float> x(64, 1.0f + r), g(128);
      comm.record(tape);
      comm.all_reduce(x.data(), x.size(), "a.fwd");
      comm.all_gather(x.data(), g.data(), 64, "b.fwd");
      comm.stop_tape();
      calls_before[r] = comm.stats().total().calls;
      std::vector<float> y(64, 7.0f), h(128);
      comm.replay(tape);
      comm.all_reduce(y.data(), y.size(), "a.fwd");
      comm.all_gather(y.data(), h.data(), 64, "b.fwd");
      comm.stop_tape();
      calls_after[r] = comm.stats().total().calls;
      replayed[r] = y;
      gathered[r] = h;
      try {  // a different site, then a short replay
        comm.replay(tape);
        comm.all_reduce(y.data(), y.size(), "other.fwd");
      } catch (const std::logic_error& e) {
        errors[r] = e.what();
      }
      try {
        comm.stop_tape();  // the replay stopped short: it says so
      } catch (const std::logic_error&) {
      }
      bool short_replay = false;
      comm.replay(tape);
      try {
        comm.stop_tape();
      } catch (const std::logic_error&) {
        short_replay = true;
      }
      if (!short_replay) errors[r] += " | no error for a short replay";
      if (replayed[r] != x || gathered[r] != g) errors[r] += " | replay differs";
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < p; ++r) {
    CHECK(calls_after[r] == calls_before[r]);
    CHECK(errors[r].find("'other.fwd'") != std::string::npos);
    CHECK(errors[r].find("|") == std::string::npos);
  }
}

TEST_CASE("recompute: bad flags fail before training", "[recompute][config]") {
  using KV = std::vector<std::pair<std::string, std::string>>;
  auto error = [](const KV& kv) {
    try {
      train_config_from_keys(kv, "test");
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const KV base = {{"num_layers", "4"}};
  auto with = [&](KV extra) {
    KV kv = base;
    kv.insert(kv.end(), extra.begin(), extra.end());
    return kv;
  };
  CHECK(error(with({{"recompute_granularity", "everything"}})).find("full or selective") != std::string::npos);
  CHECK(error(with({{"recompute_granularity", "full"}})).find("--recompute-method") != std::string::npos);
  CHECK(error(with({{"recompute_granularity", "full"}, {"recompute_method", "sideways"}})).find("uniform or block") !=
        std::string::npos);
  CHECK(error(with({{"recompute_granularity", "full"}, {"recompute_method", "uniform"}, {"recompute_num_layers", "5"}}))
            .find("between 1 and --num-layers 4") != std::string::npos);
  CHECK(error(with({{"recompute_granularity", "full"}, {"recompute_method", "block"}, {"recompute_num_layers", "0"}}))
            .find("between 1 and") != std::string::npos);
  CHECK(error(with({{"recompute_method", "uniform"}})).find("full only") != std::string::npos);
  CHECK(error(with({{"recompute_granularity", "selective"}, {"recompute_method", "uniform"}})).find("full only") !=
        std::string::npos);
  CHECK(error(with({{"recompute_granularity", "selective"}, {"recompute_num_layers", "1"}})).find("full only") !=
        std::string::npos);
  CHECK(error(with({{"recompute_num_layers", "2"}})).find("full only") != std::string::npos);
  // accepted, and in the run's JSON only when set
  const TrainConfig ok = train_config_from_keys(
      with({{"recompute_granularity", "full"}, {"recompute_method", "block"}, {"recompute_num_layers", "4"}}), "test");
  CHECK(ok.to_json().at("recompute-method") == "block");
  CHECK(ok.to_json().at("recompute-num-layers") == 4);
  CHECK(train_config_from_keys(base, "test").to_json().count("recompute-granularity") == 0);
  CHECK(train_config_from_keys(with({{"recompute_granularity", "selective"}}), "test").to_json().count(
            "recompute-method") == 0);
}
