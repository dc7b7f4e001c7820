// Failures and heterogeneity in the network model: the down:from=I,to=J outage model, links= on
// any model (one bad link among good ones), and transport=bounded,deadline=S (retransmit until a
// simulated time budget, then fill). Plans are checked directly; the data paths at TP=2 with two
// virtual ranks (ring all-reduce, endpoint mode, point-to-point).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/comm_ranks.h"
#include "netmodels/netmodel.h"
#include "sim/comm.h"
#include "sim/local_backend.h"

using namespace lossytp;
using namespace lossytp::net;
using Catch::Matchers::Contains;

namespace {

Message msg(int64_t iteration, int src = 0, int dst = 1, size_t bytes = 64 * 100) {
  Message m;
  m.group = "tp";
  m.site = "layer0.mlp.fc2.fwd";
  m.src = src;
  m.dst = dst;
  m.iteration = iteration;
  m.call = 2;
  m.bytes = bytes;
  return m;
}

std::string num(double x) {
  char b[64];
  std::snprintf(b, sizeof b, "%.17g", x);
  return b;
}

std::string error_of(const std::string& spec) {
  try {
    parse_net_spec(spec);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

void round_trips(const std::string& text) {
  const NetSpec a = parse_net_spec(text);
  const NetSpec b = parse_net_spec(a.describe());
  INFO(text << " -> " << a.describe());
  CHECK(b.describe() == a.describe());
  for (int64_t it : {0, 1, 2, 5})
    for (int src : {0, 1}) {
      const Message m = msg(it, src, 1 - src);
      CHECK(a.plan(m, 9).lost_mask == b.plan(m, 9).lost_mask);
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// down

TEST_CASE("down: every packet lost inside iterations from..to (1-based), none outside", "[net_failures]") {
  const NetSpec s = parse_net_spec("down:from=3,to=5,packet=64");
  CHECK(s.describe() == "down:from=3,to=5,packet=64");
  for (int64_t it = 0; it < 8; ++it) {  // Message::iteration is 0-based: the window is 2..4
    const DeliveryPlan d = s.plan(msg(it), 1);
    INFO("iteration " << it + 1);
    CHECK(d.packets == 100);
    const bool in = it + 1 >= 3 && it + 1 <= 5;
    CHECK(d.lost == (in ? 100u : 0u));
    CHECK(d.retransmissions == 0);
  }
  // theory: a steady (up) link outside the window
  CHECK(s.stationary_loss_rate() == 0.0);
  CHECK(s.models[0]->mean_burst_length() == 0.0);
  // scopes still apply: a dp message is outside the default scope
  Message dp = msg(3);
  dp.group = "dp";
  dp.site = "dp.grad";
  CHECK(s.plan(dp, 1).lost == 0);
}

TEST_CASE("down under transport=reliable: exact data, R rounds of waiting", "[net_failures]") {
  const NetSpec lossy = parse_net_spec("down:from=2,to=2,packet=64");
  const NetSpec rel = parse_net_spec("down:from=2,to=2,packet=64,transport=reliable");
  const NetSpec rel3 = parse_net_spec("down:from=2,to=2,rounds=3,packet=64,transport=reliable");
  CHECK(rel3.describe() == "down:from=2,to=2,rounds=3,packet=64,transport=reliable");
  const Message m = msg(1);  // iteration 2
  const DeliveryPlan l = lossy.plan(m, 1), r = rel.plan(m, 1), r3 = rel3.plan(m, 1);
  const LinkParams link;
  const double base = link.latency_s + m.bytes / link.bandwidth_Bps;
  CHECK(l.lost == 100);
  CHECK(l.seconds == Approx(base));
  CHECK(r.lost == 0);
  CHECK(r.lost_mask.empty());
  CHECK(r.rounds == 10);  // the default outage: 10 retransmission rounds
  CHECK(r.retransmissions == 1000);
  CHECK(r.seconds == Approx(base + 10 * (link.timeout_s + m.bytes / link.bandwidth_Bps)));
  CHECK(r3.rounds == 3);
  CHECK(r3.seconds == Approx(base + 3 * (link.timeout_s + m.bytes / link.bandwidth_Bps)));
  // outside the window: nothing to retransmit
  const DeliveryPlan out = rel.plan(msg(0), 1);
  CHECK(out.rounds == 0);
  CHECK(out.seconds == Approx(base));
  // composed with drop: the drop losses are retransmitted as well, still exact
  const DeliveryPlan both = parse_net_spec("down:from=2,to=2+drop:rate=0.3,packet=64,transport=reliable").plan(m, 1);
  CHECK(both.lost == 0);
  CHECK(both.rounds >= 10);
}

TEST_CASE("down: parse errors", "[net_failures]") {
  CHECK_THAT(error_of("down:from=5,to=3"),
             Contains("--net: down: from=5 is after to=3 (the window is iterations from..to, inclusive)"));
  CHECK_THAT(error_of("down:from=0,to=3"), Contains("down: from=0 is outside [1, "));
  CHECK_THAT(error_of("down:from=1.5,to=3"), Contains("down: from=1.5 is not an integer"));
  CHECK_THAT(error_of("down:to=3"), Contains("down: missing key 'from'"));
  CHECK_THAT(error_of("down:from=3"), Contains("down: missing key 'to'"));
  CHECK_THAT(error_of("down:from=1,to=3,rounds=0"), Contains("down: rounds=0 is outside [1, 1000]"));
  CHECK_THAT(error_of("down:from=1,to=3,x=1"), Contains("down: unknown key 'x'"));
  bool listed = false;
  for (const auto& [name, help] : registered_models()) listed |= name == "down";
  CHECK(listed);
  round_trips("down:from=2,to=4");
  round_trips("down:from=2,to=4,rounds=7,transport=reliable,links=1-0");
}

// ---------------------------------------------------------------------------------------------
// links=

TEST_CASE("links=: a model acts only on its directed links", "[net_failures]") {
  const NetSpec s = parse_net_spec("drop:rate=0.5,links=0-1,packet=64+exact");
  CHECK(s.describe() == "drop:rate=0.5,links=0-1,packet=64");
  size_t lost01 = 0, lost10 = 0, lost12 = 0;
  for (int64_t it = 0; it < 20; ++it) {
    lost01 += s.plan(msg(it, 0, 1), 3).lost;
    lost10 += s.plan(msg(it, 1, 0), 3).lost;
    lost12 += s.plan(msg(it, 1, 2), 3).lost;
  }
  CHECK(lost01 > 800);  // ~1000 of 2000
  CHECK(lost01 < 1200);
  CHECK(lost10 == 0);   // directed: 0-1 does not match 1-0
  CHECK(lost12 == 0);
  // the same packets as the model without links= on the link it acts on
  const NetSpec all = parse_net_spec("drop:rate=0.5,packet=64");
  CHECK(s.plan(msg(4, 0, 1), 3).lost_mask == all.plan(msg(4, 0, 1), 3).lost_mask);
  // endpoint mode (dst = -1): matched by the source alone
  CHECK(s.plan(msg(4, 0, -1), 3).lost > 0);
  CHECK(s.plan(msg(4, 1, -1), 3).lost == 0);
  // the rate on each link: what fill=rescale divides by
  CHECK(s.loss_rate_for(msg(0, 0, 1)) == Approx(0.5));
  CHECK(s.loss_rate_for(msg(0, 1, 0)) == 0.0);
  CHECK(s.stationary_loss_rate() == Approx(0.5));
}

TEST_CASE("links=: wildcards, several links, composition with a good-link model", "[net_failures]") {
  // rank 2 down for iteration 1 (every link in or out of it), mild loss everywhere
  const NetSpec s = parse_net_spec("down:from=1,to=1,links=2-*|*-2+drop:rate=0.01,packet=64");
  CHECK(s.describe() == "down:from=1,to=1,links=2-*|*-2+drop:rate=0.01,packet=64");
  CHECK(s.plan(msg(0, 2, 3), 1).lost == 100);
  CHECK(s.plan(msg(0, 1, 2), 1).lost == 100);
  CHECK(s.plan(msg(0, 0, 1), 1).lost < 10);
  CHECK(s.plan(msg(1, 2, 3), 1).lost < 10);  // iteration 2: up again
  round_trips("drop:rate=0.3,links=0-1|1-0+ge:preset=one,links=*-0");
  round_trips("ge:p=0.1,r=0.3,step=message,links=1-0,mode=endpoint,fill=rescale");
}

TEST_CASE("links=: parse errors and ranks outside the group", "[net_failures]") {
  CHECK_THAT(error_of("drop:rate=0.1,links=0"), Contains("drop: link '0' in 'links=0' is not SRC-DST"));
  CHECK_THAT(error_of("drop:rate=0.1,links=a-1"), Contains("drop: link 'a-1' in 'links=a-1' is not SRC-DST"));
  CHECK_THAT(error_of("drop:rate=0.1,links=0-1|"), Contains("drop: link '' in 'links=0-1|'"));
  CHECK_THAT(error_of("drop:rate=0.1,links=1-1"), Contains("drop: link '1-1' in 'links=1-1' joins a rank to itself"));
  CHECK_THAT(error_of("drop:rate=0.1,links=0-1,links=1-0"), Contains("drop: duplicate key 'links'"));
  CHECK_THAT(error_of("exact:links=0-1"), Contains("exact: links=0-1 selects the links of a loss model; exact has none"));
  CHECK_THAT(error_of("caat:p=0.5,links=0-1"), Contains("caat has none"));
  const NetSpec s = parse_net_spec("drop:rate=0.1,links=0-1|3-*");
  CHECK_NOTHROW(s.check_ranks(4, "tp"));
  CHECK_NOTHROW(s.check_ranks(1, "dp"));  // a group of one rank carries no message
  try {
    s.check_ranks(2, "tp");
    FAIL("no error");
  } catch (const std::invalid_argument& e) {
    CHECK_THAT(std::string(e.what()),
               Contains("--net: drop: link '3-*' (links=0-1|3-*) names rank 3, outside the 2 ranks of group 'tp' (ranks 0..1)"));
  }
}

// ---------------------------------------------------------------------------------------------
// transport=bounded

TEST_CASE("transport=bounded: parse errors and describe", "[net_failures]") {
  CHECK_THAT(error_of("drop:rate=0.1,transport=bounded"),
             Contains("--net: transport=bounded needs deadline=S"));
  CHECK_THAT(error_of("drop:rate=0.1,transport=bounded,deadline=0"), Contains("--net: deadline=0 must be > 0"));
  CHECK_THAT(error_of("drop:rate=0.1,transport=bounded,deadline=-1"), Contains("--net: deadline=-1 must be > 0"));
  CHECK_THAT(error_of("drop:rate=0.1,transport=bounded,deadline=x"), Contains("--net: deadline=x is not a number"));
  CHECK_THAT(error_of("drop:rate=0.1,transport=reliable,deadline=1e-3"),
             Contains("--net: option 'deadline=1e-3' needs transport=bounded"));
  CHECK_THAT(error_of("drop:rate=0.1,deadline=1e-3"), Contains("needs transport=bounded"));
  CHECK_THAT(error_of("drop:rate=0.1,transport=fast"),
             Contains("--net: transport=fast is not one of lossy, reliable, bounded"));
  const NetSpec s = parse_net_spec("drop:rate=0.1,deadline=0.0005,transport=bounded");
  CHECK(s.transport == Transport::Bounded);
  CHECK(s.deadline_s == 0.0005);
  CHECK(s.describe() == "drop:rate=0.1,transport=bounded,deadline=0.0005");
  round_trips("drop:rate=0.3,transport=bounded,deadline=0.00025,packet=64");
  round_trips("ge:preset=one,links=0-1,transport=bounded,deadline=1,mode=endpoint");
  // a loss rate of 1 is fine: the deadline ends the rounds
  CHECK(parse_net_spec("drop:rate=1,packet=64,transport=bounded,deadline=1e-3").plan(msg(0), 1).lost == 100);
}

TEST_CASE("transport=bounded: tiny deadline = lossy, huge = reliable, monotone between", "[net_failures]") {
  const std::string base = "drop:rate=0.3,packet=64";
  const NetSpec lossy = parse_net_spec(base);
  const NetSpec reliable = parse_net_spec(base + ",transport=reliable");
  const NetSpec tiny = parse_net_spec(base + ",transport=bounded,deadline=1e-12");
  const NetSpec huge = parse_net_spec(base + ",transport=bounded,deadline=1e6");
  const LinkParams link;
  for (int64_t it = 0; it < 10; ++it) {
    const Message m = msg(it);
    const DeliveryPlan l = lossy.plan(m, 5), t = tiny.plan(m, 5), h = huge.plan(m, 5), r = reliable.plan(m, 5);
    REQUIRE(l.lost > 0);
    // tiny: the first attempt's losses, no round, the transfer's time only
    CHECK(t.lost_mask == l.lost_mask);
    CHECK(t.lost == l.lost);
    CHECK(t.rounds == 0);
    CHECK(t.seconds == Approx(l.seconds));
    // huge: everything arrives, exactly the reliable transport's rounds and time
    CHECK(h.lost == 0);
    CHECK(h.lost_mask.empty());
    CHECK(h.rounds == r.rounds);
    CHECK(h.retransmissions == r.retransmissions);
    CHECK(h.seconds == r.seconds);
  }
  // in between: fewer lost packets, more rounds and time as the deadline grows; time at most
  // the deadline, and exactly the deadline while packets are still missing
  const Message m = msg(3, 0, 1, 64 * 1000);
  const double first = link.latency_s + m.bytes / link.bandwidth_Bps;
  size_t prev_lost = lossy.plan(m, 5).lost, prev_rounds = 0;
  for (int k = 0; k <= 8; ++k) {
    const double deadline = first + k * 0.5 * link.timeout_s;
    const DeliveryPlan d = parse_net_spec(base + ",transport=bounded,deadline=" + num(deadline)).plan(m, 5);
    INFO("deadline " << deadline << ": lost " << d.lost << ", rounds " << d.rounds);
    CHECK(d.lost <= prev_lost);
    CHECK(d.rounds >= prev_rounds);
    CHECK(d.seconds <= deadline * (1 + 1e-9));
    if (d.lost > 0) CHECK(d.seconds == Approx(deadline));
    CHECK(d.rounds <= static_cast<size_t>(k / 2));  // a round costs more than one timeout
    prev_lost = d.lost;
    prev_rounds = d.rounds;
  }
  CHECK(prev_lost < lossy.plan(m, 5).lost);
}

TEST_CASE("transport=bounded with down: delivered when the outage fits the deadline", "[net_failures]") {
  const LinkParams link;
  const Message m = msg(0);  // iteration 1, inside the window
  const double round = link.timeout_s + m.bytes / link.bandwidth_Bps;
  const double first = link.latency_s + m.bytes / link.bandwidth_Bps;
  const std::string s = "down:from=1,to=1,rounds=3,packet=64,transport=bounded,deadline=";
  const DeliveryPlan short_ = parse_net_spec(s + num(first + 2.5 * round)).plan(m, 1);
  CHECK(short_.lost == 100);  // round 3 would end after the deadline: the link is still down
  CHECK(short_.rounds == 2);
  CHECK(short_.retransmissions == 200);
  CHECK(short_.seconds == Approx(first + 2.5 * round));
  const DeliveryPlan enough = parse_net_spec(s + num(first + 3.5 * round)).plan(m, 1);
  CHECK(enough.lost == 0);
  CHECK(enough.rounds == 3);
  CHECK(enough.seconds == Approx(first + 3 * round));
}

// ---------------------------------------------------------------------------------------------
// The data paths at TP=2 (two virtual ranks).

namespace {

struct RankResult {
  std::vector<float> out;
  SiteCounters c;
};

// Each rank all-reduces a vector (rank r: r + 1 + i * 1e-3) at a TP forward site, at 1-based
// iteration `iteration`, under `spec`; returns both ranks' results and counters.
std::vector<RankResult> all_reduce_pair(const std::string& spec, int64_t iteration, size_t n = 4096) {
  std::vector<RankResult> res(2);
  lossytp::testing::on_ranks(2, spec, [&](Comm& comm, int r) {
    comm.begin_step(iteration - 1);
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(r + 1) + 1e-3f * static_cast<float>(i);
    comm.all_reduce(v.data(), n, "layer0.mlp.fc2.fwd");
    res[r].out = v;
    res[r].c = comm.stats().site("layer0.mlp.fc2.fwd");
  });
  return res;
}

bool exact_sum(const std::vector<float>& v) {
  for (size_t i = 0; i < v.size(); ++i)
    if (v[i] != 3.0f + 2e-3f * static_cast<float>(i) &&
        std::abs(v[i] - (3.0f + 2e-3f * static_cast<float>(i))) > 1e-5f)
      return false;
  return true;
}

}  // namespace

TEST_CASE("TP=2 ring: down loses every packet in its window only; reliable gives exact data, more time",
          "[net_failures]") {
  for (const char* mode : {"ring", "endpoint"}) {
    INFO(mode);
    const std::string spec = std::string("down:from=2,to=3,packet=256,mode=") + mode;
    for (int64_t it : {1, 2, 3, 4}) {
      const auto res = all_reduce_pair(spec, it);
      for (const auto& r : res) {
        const bool in = it == 2 || it == 3;
        INFO("iteration " << it);
        CHECK(r.c.packets > 0);
        CHECK(r.c.packets_lost == (in ? r.c.packets : 0));
        CHECK(exact_sum(r.out) == !in);
      }
    }
    const auto lossy = all_reduce_pair(spec, 2);
    const auto rel = all_reduce_pair(spec + ",transport=reliable", 2);
    const auto up = all_reduce_pair(spec + ",transport=reliable", 1);
    for (int r = 0; r < 2; ++r) {
      CHECK(exact_sum(rel[r].out));
      CHECK(rel[r].c.packets_lost == 0);
      CHECK(rel[r].c.sim_seconds > up[r].c.sim_seconds + 9 * 1e-4);  // 10 rounds of 1e-4 s timeouts
      CHECK(lossy[r].c.sim_seconds < rel[r].c.sim_seconds);
      if (std::string(mode) == "ring") CHECK(rel[r].c.retransmissions == rel[r].c.packets * 10);
    }
  }
}

TEST_CASE("TP=2 ring: links= restricts a model to one direction of the ring", "[net_failures]") {
  // ring: rank r receives from r - 1, so rank 1 receives over 0->1 and rank 0 over 1->0
  const auto res = all_reduce_pair("drop:rate=0.5,links=0-1,packet=256", 1);
  CHECK(res[0].c.packets_lost == 0);
  CHECK(res[1].c.packets_lost > 0);
  CHECK(res[1].c.packets_lost < res[1].c.packets);
  // rank 0 received everything, but its all-gather block came from rank 1's lossy sum: the
  // ranks' results differ
  CHECK(res[0].out != res[1].out);
}

TEST_CASE("TP=2: a link naming a rank outside the group fails at set_network", "[net_failures]") {
  LocalWorld world(2);
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  auto net = std::make_shared<const NetSpec>(parse_net_spec("drop:rate=0.1,links=0-2"));
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      Comm comm(world.group("tp", {0, 1}, r), "tp", nullptr);
      try {
        comm.set_network(net, 1);
      } catch (const std::invalid_argument& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& e : errors)
    CHECK_THAT(e, Contains("link '0-2' (links=0-2) names rank 2, outside the 2 ranks of group 'tp'"));
}

TEST_CASE("TP=2: transport=bounded sends through the lossy path and counts its rounds", "[net_failures]") {
  for (const char* mode : {"ring", "endpoint"}) {
    INFO(mode);
    const std::string base = std::string("drop:rate=0.3,packet=256,mode=") + mode;
    const auto lossy = all_reduce_pair(base, 1);
    const auto tiny = all_reduce_pair(base + ",transport=bounded,deadline=1e-12", 1);
    const auto mid = all_reduce_pair(base + ",transport=bounded,deadline=1.5e-4", 1);
    const auto huge = all_reduce_pair(base + ",transport=bounded,deadline=1", 1);
    for (int r = 0; r < 2; ++r) {
      // tiny: the lossy transport's result, bit for bit
      CHECK(tiny[r].out == lossy[r].out);
      CHECK(tiny[r].c.packets_lost == lossy[r].c.packets_lost);
      CHECK(tiny[r].c.retransmissions == 0);
      // one round fits: fewer lost packets, retransmissions and their time counted
      CHECK(mid[r].c.packets_lost < lossy[r].c.packets_lost);
      CHECK(mid[r].c.retransmissions > 0);
      CHECK(mid[r].c.sim_seconds > lossy[r].c.sim_seconds);
      // huge: exact data
      CHECK(huge[r].c.packets_lost == 0);
      CHECK(exact_sum(huge[r].out));
      CHECK(huge[r].c.retransmissions > 0);
    }
  }
}

TEST_CASE("p2p: down and transport=bounded on a point-to-point message", "[net_failures]") {
  LocalWorld world(2);
  auto net = std::make_shared<const NetSpec>(
      parse_net_spec("down:from=1,to=1,rounds=2,packet=64,scope=pp,transport=bounded,deadline=1e-12"));
  std::vector<float> got(1600, -1.0f);
  SiteCounters c;
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      Comm comm(world.group("pp", {0, 1}, r), "pp", nullptr);
      comm.set_network(net, 7);
      comm.begin_step(0);
      std::vector<float> v(1600, 2.0f);
      if (r == 0) {
        comm.send(v.data(), v.size(), 1, 0, "pp.fwd");
        comm.wait_sends();
      } else {
        comm.recv(got.data(), got.size(), 0, 0, "pp.fwd");
        c = comm.stats().site("pp.fwd");
      }
    });
  for (auto& t : threads) t.join();
  CHECK(c.packets == 100);
  CHECK(c.packets_lost == 100);
  CHECK(std::all_of(got.begin(), got.end(), [](float x) { return x == 0.0f; }));
}
