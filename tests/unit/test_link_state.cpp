// Link state (ge ...,state=link): each directed link's Gilbert-Elliott chain runs on across its
// messages, collectives and iterations. Parsing, the statistics against theory (loss rate and
// mean burst counted across message boundaries), determinism and the store's serialisation (a
// resume continues every chain), retransmission rounds, the sampler, and the data paths at TP=2
// (two virtual ranks) stopped, saved and resumed.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/comm_ranks.h"
#include "common/small_config.h"
#include "experiments/checkpoint.h"
#include "experiments/dataset.h"
#include "experiments/trainer.h"
#include "kernels/packet_rng.h"
#include "netmodels/link_states.h"
#include "netmodels/netmodel.h"
#include "netmodels/sample.h"
#include "sim/comm.h"
#include "sim/local_backend.h"

using namespace lossytp;
using namespace lossytp::net;
using Catch::Matchers::Contains;

namespace {

std::string error_of(const std::string& spec) {
  try {
    parse_net_spec(spec);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

// Message k of a link's stream: 10 calls per iteration, so the stream crosses iterations.
Message stream_message(size_t k, LinkStates* store, size_t bytes) {
  Message m;
  m.group = "tp";
  m.site = "layer0.mlp.fc2.fwd";
  m.src = 0;
  m.dst = 1;
  m.iteration = static_cast<int64_t>(k / 10);
  m.call = static_cast<int64_t>(k % 10);
  m.bytes = bytes;
  m.link_states = store;
  return m;
}

// Loss rate and mean burst of `packets` packets in messages of `per` packets (packet=64: 16
// floats a packet) through NetSpec::plan, bursts counted across message boundaries.
struct Stats {
  double loss = 0, burst = 0;
};
Stats stream_stats(const std::string& spec_text, size_t packets, size_t per) {
  const NetSpec spec = parse_net_spec(spec_text + ",packet=64,scope=*");
  LinkStates store;
  size_t lost = 0, bursts = 0;
  bool prev = false;
  for (size_t k = 0; k * per < packets; ++k) {
    const DeliveryPlan d = spec.plan(stream_message(k, &store, per * 64), 7);
    REQUIRE(d.packets == per);
    if (d.lost_mask.empty()) {
      prev = false;
      continue;
    }
    for (const uint8_t x : d.lost_mask) {
      lost += x;
      bursts += x && !prev;
      prev = x;
    }
  }
  return {static_cast<double>(lost) / static_cast<double>(packets),
          static_cast<double>(lost) / static_cast<double>(bursts)};
}

}  // namespace

TEST_CASE("link state: state= parses, describes and round-trips; bad values are named", "[net][link_state]") {
  const NetSpec a = parse_net_spec("ge:preset=default,state=link");
  CHECK(a.describe() == "ge:p=0.05,r=0.45,k=1,h=0,state=link");
  CHECK(a.models[0]->link_state());
  CHECK(parse_net_spec(a.describe()).describe() == a.describe());
  // state=message is the default and is not printed
  const NetSpec b = parse_net_spec("ge:preset=default,state=message");
  CHECK(b.describe() == "ge:p=0.05,r=0.45,k=1,h=0");
  CHECK_FALSE(b.models[0]->link_state());
  const NetSpec c = parse_net_spec("ge:p=0.1,r=0.3,step=message,state=link,links=0-1,fill=stale,transport=reliable");
  CHECK(c.describe() == "ge:p=0.1,r=0.3,k=1,h=0,step=message,state=link,links=0-1,fill=stale,transport=reliable");
  CHECK(parse_net_spec(c.describe()).describe() == c.describe());
  CHECK(parse_net_spec("ge:preset=one,state=link+drop:rate=0.1").describe() ==
        "ge:p=0.01,r=0.19,k=1,h=0,state=link+drop:rate=0.1");
  CHECK_THAT(error_of("ge:preset=one,state=links"),
             Contains("--net: ge: state=links is not one of message, link"));
  CHECK_THAT(error_of("ge:preset=one,stat=link"), Contains("unknown key 'stat'"));
  CHECK_THAT(error_of("ge:preset=one,stat=link"), Contains("state"));  // listed among the known keys
  CHECK_THAT(error_of("drop:rate=0.1,state=link"), Contains("drop: unknown key 'state'"));
  bool listed = false;
  for (const auto& [name, help] : registered_models()) listed |= name == "ge" && help.find("state=message|link") != std::string::npos;
  CHECK(listed);
}

TEST_CASE("link state: over messages of 100 packets the stream is one chain (per-packet theory)",
          "[net][link_state]") {
  // 10^7 packets per preset, bursts counted across message boundaries (and iterations: 10
  // messages per iteration). default: mean burst 2.22; one: 5.26 (longer bursts).
  for (const char* preset : {"default", "one"}) {
    INFO(preset);
    const std::string text = std::string("ge:preset=") + preset;
    const NetSpec link = parse_net_spec(text + ",state=link");
    const double L = link.models[0]->stationary_loss_rate();
    const double per_packet = link.models[0]->mean_burst_length();
    // the theory of state=link does not depend on the message size
    CHECK(link.models[0]->mean_burst_length_for(100) == per_packet);
    CHECK(link.models[0]->mean_burst_length_for(1) == per_packet);
    const Stats s = stream_stats(text + ",state=link", 10000000, 100);
    CHECK(s.loss == Approx(L).epsilon(0.02));
    CHECK(s.burst == Approx(per_packet).epsilon(0.02));
    // state=message at 100 packets: each message restarts from a stationary draw, its own formula
    const NetSpec msg = parse_net_spec(text);
    const double restart = msg.models[0]->mean_burst_length_for(100);
    const Stats m = stream_stats(text, 10000000, 100);
    CHECK(m.loss == Approx(L).epsilon(0.02));
    CHECK(m.burst == Approx(restart).epsilon(0.02));
    if (std::string(preset) == "one") {  // bursts cut at message boundaries: 5.06 against 5.26
      CHECK(restart < 0.97 * per_packet);
      CHECK(m.burst < 0.98 * per_packet);
    }
  }
}

TEST_CASE("link state: step=message moves the link's chain once per message, across iterations",
          "[net][link_state]") {
  // k=0.9, h=0.3: losses inside both states, so bursts end inside a message too
  const std::string text = "ge:p=0.05,r=0.2,k=0.9,h=0.3,step=message,state=link";
  const NetSpec s = parse_net_spec(text);
  const double th = s.models[0]->mean_burst_length_for(10);
  CHECK(parse_net_spec("ge:p=0.05,r=0.2,k=0.9,h=0.3,step=message").models[0]->mean_burst_length_for(10) == th);
  const Stats st = stream_stats(text, 2000000, 10);
  CHECK(st.loss == Approx(s.models[0]->stationary_loss_rate()).epsilon(0.03));
  CHECK(st.burst == Approx(th).epsilon(0.03));
}

TEST_CASE("link state: deterministic, per link, and a saved store continues the chains exactly",
          "[net][link_state]") {
  for (const char* text : {"ge:p=0.05,r=0.2,k=0.95,h=0.1,state=link,packet=64,scope=*",
                           "ge:p=0.05,r=0.2,k=0.95,h=0.1,step=message,state=link,packet=64,scope=*"}) {
    INFO(text);
    const NetSpec spec = parse_net_spec(text);
    const NetSpec same = parse_net_spec(spec.describe());
    // two links interleaved; a third store stops after 50 messages, is serialised, and resumes
    LinkStates a, b, first_half;
    std::vector<std::vector<uint8_t>> ma, mb;
    for (size_t k = 0; k < 100; ++k) {
      for (int src : {0, 1}) {
        Message m = stream_message(k, &a, 64 * (1 + k % 7));
        m.src = src;
        m.dst = 1 - src;
        ma.push_back(spec.plan(m, 3).lost_mask);
        m.link_states = &b;
        mb.push_back(same.plan(m, 3).lost_mask);
        if (k < 50) {
          m.link_states = &first_half;
          CHECK(spec.plan(m, 3).lost_mask == ma.back());
        }
      }
    }
    CHECK(ma == mb);
    CHECK(a == b);
    CHECK(a.size() == 2);
    const std::vector<uint8_t> bytes = first_half.serialize();
    LinkStates resumed;
    resumed.deserialize(bytes.data(), bytes.size(), "test");
    CHECK(resumed == first_half);
    for (size_t k = 50; k < 100; ++k)
      for (int src : {0, 1}) {
        Message m = stream_message(k, &resumed, 64 * (1 + k % 7));
        m.src = src;
        m.dst = 1 - src;
        CHECK(spec.plan(m, 3).lost_mask == ma[2 * k + static_cast<size_t>(src)]);
      }
    CHECK(resumed == a);
    // a fresh store (no history) gives other masks later on: the state matters
    size_t differ = 0;
    for (size_t k = 50; k < 100; ++k) {
      LinkStates fresh;
      Message m = stream_message(k, &fresh, 64 * (1 + k % 7));
      differ += spec.plan(m, 3).lost_mask != ma[2 * k];
    }
    CHECK(differ > 0);
  }
}

TEST_CASE("link state: a link's first message is state=message's; the fast loop agrees with the reference",
          "[net][link_state]") {
  const NetSpec link = parse_net_spec("ge:p=0.1,r=0.3,k=0.9,h=0.2,state=link,packet=64,scope=*");
  const NetSpec msg = parse_net_spec("ge:p=0.1,r=0.3,k=0.9,h=0.2,packet=64,scope=*");
  for (size_t k = 0; k < 20; ++k) {
    LinkStates fresh;
    const Message m = stream_message(k, &fresh, 64 * 300);
    CHECK(link.plan(m, 5).lost_mask == msg.plan(m, 5).lost_mask);
  }
  const PacketStream s = packet_stream(5, 77, 0, 1, 2, 0, 9, 4, 0);
  const uint64_t tl[2] = {prob_threshold(0.1), prob_threshold(0.8)};
  for (size_t n : {0, 1, 3, 4, 5, 255, 256, 257, 1001})
    for (int start : {-1, 0, 1}) {
      INFO("n = " << n << ", start = " << start);
      std::vector<uint8_t> c(n, 0), d(n, 0);
      const int ec = ge_packet_loss(s, prob_threshold(0.3), prob_threshold(0.1), prob_threshold(0.2), tl, n,
                                    c.data(), start);
      const int ed = ge_packet_loss_reference(s, prob_threshold(0.3), prob_threshold(0.1), prob_threshold(0.2), tl,
                                              n, d.data(), start);
      CHECK(c == d);
      CHECK(ec == ed);
      if (n == 0) CHECK(ec == start);
    }
}

TEST_CASE("link state: without a store state=link is refused with a clear error", "[net][link_state]") {
  const NetSpec spec = parse_net_spec("ge:preset=one,state=link,scope=*");
  Message m = stream_message(0, nullptr, 6400);
  CHECK_THROWS_WITH(spec.plan(m, 1), Contains("state=link") && Contains("tp.layer0.mlp.fc2.fwd"));
  // state=message needs none
  CHECK_NOTHROW(parse_net_spec("ge:preset=one,scope=*").plan(m, 1));
}

TEST_CASE("link state: retransmission rounds continue the link's chain", "[net][link_state]") {
  const NetSpec rel = parse_net_spec("ge:p=0.2,r=0.3,state=link,packet=64,scope=*,transport=reliable");
  const NetSpec lossy = parse_net_spec("ge:p=0.2,r=0.3,state=link,packet=64,scope=*");
  size_t with_rounds = 0;
  for (size_t k = 0; k < 200; ++k) {
    // the reliable plan's chain: the message, then each round's resent packets on the same link
    LinkStates s1, s2;
    const Message m1 = stream_message(k, &s1, 64 * 50);
    const DeliveryPlan d = rel.plan(m1, 4);
    CHECK(d.lost == 0);
    Message m2 = stream_message(k, &s2, 64 * 50);
    DeliveryPlan first = lossy.plan(m2, 4);
    std::vector<size_t> missing;
    for (size_t i = 0; i < first.lost_mask.size(); ++i)
      if (first.lost_mask[i]) missing.push_back(i);
    size_t rounds = 0;
    for (int round = 1; !missing.empty(); ++round) {
      m2.attempt = round;
      std::vector<uint8_t> again(missing.size(), 0);
      lossy.models[0]->drop_packets(m2, 4, again.size(), again.data());
      std::vector<size_t> next;
      for (size_t j = 0; j < missing.size(); ++j)
        if (again[j]) next.push_back(missing[j]);
      missing.swap(next);
      ++rounds;
    }
    CHECK(d.rounds == rounds);
    CHECK(s1 == s2);
    with_rounds += rounds > 0;
  }
  CHECK(with_rounds > 10);
}

TEST_CASE("link state: the store's serialised form is checked", "[net][link_state]") {
  LinkStates s;
  s.at(0, "tp", 0, 1) = 1;
  s.at(1, "dp", 3, -1) = 0;
  s.at(0, "pp", 1, 0);  // fresh
  const std::vector<uint8_t> bytes = s.serialize();
  LinkStates t;
  t.deserialize(bytes.data(), bytes.size(), "x");
  CHECK(t == s);
  CHECK(t.at(0, "pp", 1, 0) == LinkStates::kFresh);
  CHECK_THROWS_WITH(t.deserialize(bytes.data(), bytes.size() - 1, "ckpt"), Contains("ckpt") && Contains("truncated"));
  std::vector<uint8_t> bad = bytes;
  bad[0] = 'X';
  CHECK_THROWS_WITH(t.deserialize(bad.data(), bad.size(), "ckpt"), Contains("bad magic"));
  bad = bytes;
  bad.back() = 7;  // a state that is neither 0, 1 nor fresh
  CHECK_THROWS_WITH(t.deserialize(bad.data(), bad.size(), "ckpt"), Contains("corrupt"));
  bad = bytes;
  bad.push_back(0);
  CHECK_THROWS_WITH(t.deserialize(bad.data(), bad.size(), "ckpt"), Contains("trailing"));
  CHECK(t == s);  // a failed read leaves the store as it was
}

TEST_CASE("link state: net sample shows state=message and state=link against theory", "[net][link_state]") {
  const NetSpec spec = parse_net_spec("ge:preset=one");
  const auto v = sample_link_states(spec, 2000000, 3, 100);
  REQUIRE(v.size() == 2);
  CHECK(v[0].state == "message");
  CHECK(v[1].state == "link");
  CHECK(v[1].spec == "ge:p=0.01,r=0.19,k=1,h=0,state=link");
  CHECK(v[1].theoretical_mean_burst_length == Approx(1 / 0.19));
  CHECK(v[0].theoretical_mean_burst_length < 0.97 * v[1].theoretical_mean_burst_length);
  for (const LinkSample& s : v) {
    CHECK(s.observed_loss_rate == Approx(s.theoretical_loss_rate).epsilon(0.03));
    CHECK(s.mean_burst_length == Approx(s.theoretical_mean_burst_length).epsilon(0.03));
  }
  const std::string text = format_samples(v, false);
  CHECK_THAT(text, Contains("state=message: ") && Contains("state=link: "));
  const std::string json = format_samples(v, true);
  CHECK_THAT(json, Contains("\"other_states\"") && Contains("\"state\": \"link\""));
  // the order follows the spec given; no state= option: one sample
  CHECK(sample_link_states(parse_net_spec("ge:preset=one,state=link"), 1000, 3)[0].state == "link");
  CHECK(sample_link_states(parse_net_spec("drop:rate=0.1"), 1000, 3).size() == 1);
}

// ---------------------------------------------------------------------------------------------
// The data paths at TP=2 (two virtual ranks): a run of 6 iterations equals one stopped after 3,
// whose stores are serialised and handed to fresh Comms (as a checkpoint does).

namespace {

struct RankRun {
  std::vector<float> out;  // the results of every call, concatenated
  int64_t lost = 0, retransmissions = 0;
  std::vector<uint8_t> store;  // the store at the end, serialised
};

// Iterations [from, to) of 3 all-reduces and a reduce-scatter each at TP forward sites, starting
// from the serialised stores `start` (empty: fresh).
std::vector<RankRun> run_pair(const std::string& spec, int from, int to, const std::vector<RankRun>* start) {
  std::vector<RankRun> res(2);
  lossytp::testing::on_ranks(2, spec, [&](Comm& comm, int r) {
    if (start && !(*start)[r].store.empty())
      comm.link_states().deserialize((*start)[r].store.data(), (*start)[r].store.size(), "test");
    const size_t n = 3000;
    for (int it = from; it < to; ++it) {
      comm.begin_step(it);
      for (int c = 0; c < 3; ++c) {
        std::vector<float> v(n);
        for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(r + 1 + c) + 1e-3f * static_cast<float>(i % 97);
        comm.all_reduce(v.data(), n, "layer" + std::to_string(c) + ".mlp.fc2.fwd");
        res[r].out.insert(res[r].out.end(), v.begin(), v.end());
      }
      std::vector<float> in(2 * 512, static_cast<float>(r + 1)), out(512);
      comm.reduce_scatter(in.data(), out.data(), 512, "layer0.attn.proj.bwd");
      res[r].out.insert(res[r].out.end(), out.begin(), out.end());
    }
    const SiteCounters t = comm.stats().total();
    res[r].lost = t.packets_lost;
    res[r].retransmissions = t.retransmissions;
    res[r].store = comm.link_states().serialize();
  });
  return res;
}

}  // namespace

TEST_CASE("link state: TP=2 virtual ranks, stopped after 3 iterations and resumed, bit-identical",
          "[net][link_state]") {
  for (const char* spec : {"ge:p=0.05,r=0.3,state=link,packet=256",
                           "ge:p=0.05,r=0.3,step=message,state=link,packet=256,fill=count",
                           "ge:p=0.05,r=0.3,state=link,packet=256,mode=endpoint,fill=rescale",
                           "ge:p=0.05,r=0.3,state=link,packet=256,encode=hadamard,block=64",
                           "ge:p=0.05,r=0.3,state=link,packet=256,transport=bounded,deadline=0.00015",
                           "ge:p=0.05,r=0.3,state=link,links=1-0,packet=256+drop:rate=0.01",
                           "ge:p=0.05,r=0.3,state=link,packet=256,transport=reliable,scope=tp.fwd"}) {
    INFO(spec);
    const auto whole = run_pair(spec, 0, 6, nullptr);
    const auto first = run_pair(spec, 0, 3, nullptr);
    const auto second = run_pair(spec, 3, 6, &first);
    for (int r = 0; r < 2; ++r) {
      INFO("rank " << r);
      std::vector<float> joined = first[r].out;
      joined.insert(joined.end(), second[r].out.begin(), second[r].out.end());
      CHECK(joined == whole[r].out);  // bit-identical
      CHECK(first[r].lost + second[r].lost == whole[r].lost);
      CHECK(second[r].store == whole[r].store);
      CHECK(first[r].retransmissions + second[r].retransmissions == whole[r].retransmissions);
    }
    CHECK(whole[0].lost + whole[1].lost + whole[0].retransmissions + whole[1].retransmissions > 0);
  }
}

// ---------------------------------------------------------------------------------------------
// Checkpoints: the trainer saves each rank's chains (a version-3 file, checksummed), a resume
// continues them, and runs without state=link still write version 2.

namespace {

std::vector<TrainResult> train_pair(TrainConfig cfg, const std::string& out) {
  cfg.out = out;
  TokenCorpus corpus = load_corpus(cfg.data);
  LocalWorld world(2, cfg.compute().device);
  std::vector<TrainResult> res(2);
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      try {
        res[r] = train(cfg, corpus, world, r);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const std::string& e : errors) REQUIRE(e.empty());
  return res;
}

std::string magic_of(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  char m[8] = {};
  f.read(m, 8);
  return std::string(m, 8);
}

}  // namespace

TEST_CASE("link state: checkpoints carry each rank's chains and a resume continues them", "[link_state][checkpoint]") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("lossytp-linkstate-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  TrainConfig c = testing::small_config(2, 1, 4, 4, 6);
  c.comm_timeout = 20;
  c.eval_interval = 2;  // the stopped run evaluates at its last iteration, the whole one does not
  c.eval_iters = 1;
  c.net = "ge:p=0.01,r=0.01,h=0.5,state=link,packet=64";
  const auto whole = train_pair(c, (dir / "whole").string());
  TrainConfig first = c;
  first.train_iters = 3;
  first.save_interval = 3;
  train_pair(first, (dir / "part").string());
  const std::string part = (dir / "part").string();
  for (int r = 0; r < 2; ++r) {
    const CheckpointCheck k = verify_checkpoint_file(part, r, 3);
    CHECK(k.ok);
    CHECK(k.checksummed);
    CHECK(magic_of(checkpoint_file(part, r, 3)) == "LTPCKPT3");
  }
  TrainConfig rest = c;
  rest.load = part;
  rest.save_interval = 3;
  const auto resumed = train_pair(rest, part);
  for (int r = 0; r < 2; ++r) {
    REQUIRE(resumed[r].train_loss.size() == 3);
    for (size_t i = 0; i < 3; ++i) CHECK(resumed[r].train_loss[i] == whole[r].train_loss[3 + i]);  // bit for bit
  }
  // the section is covered by the checksum: a flipped byte in it is named, resume falls back
  const std::string f6 = checkpoint_file(part, 1, 6);
  REQUIRE(fs::exists(f6));
  const auto size = fs::file_size(f6);
  {
    std::fstream f(f6, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(size - 8 - 3));
    char b = 0;
    f.read(&b, 1);
    b = static_cast<char>(b ^ 0x10);
    f.seekp(static_cast<std::streamoff>(size - 8 - 3));
    f.write(&b, 1);
  }
  const CheckpointCheck bad = verify_checkpoint_file(part, 1, 6);
  CHECK_FALSE(bad.ok);
  CHECK_THAT(bad.problem, Contains("checksum"));
  CHECK(find_resume_point(part, 2).iteration == 3);
  fs::resize_file(f6, size - 1);
  CHECK_THAT(verify_checkpoint_file(part, 1, 6).problem, Contains("truncated") || Contains("corrupt"));
  // without state=link: version-2 files, as before
  TrainConfig plain = first;
  plain.net = "ge:p=0.01,r=0.01,h=0.5,packet=64";
  train_pair(plain, (dir / "plain").string());
  CHECK(magic_of(checkpoint_file((dir / "plain").string(), 0, 3)) == "LTPCKPT2");
  fs::remove_all(dir);
}
