// Runs body(comm, rank) on p virtual ranks (threads, sim/local_backend.h) forming one group
// {0, ..., p-1}, each rank's Comm under the network `spec` ("" = none; seed 11). The body starts
// its own steps (comm.begin_step). REQUIREs that no rank threw. Shared by the comm-level unit tests
// of the network models (fill=count, hadamard, failures, link state).
#pragma once
#include <catch2/catch.hpp>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "netmodels/netmodel.h"
#include "sim/comm.h"
#include "sim/local_backend.h"

namespace lossytp::testing {

template <typename F>
void on_ranks(int p, const std::string& spec, F body, const std::string& group = "tp") {
  std::shared_ptr<const net::NetSpec> net;
  if (!spec.empty()) net = std::make_shared<const net::NetSpec>(net::parse_net_spec(spec));
  LocalWorld world(p);
  std::vector<int> members(p);
  for (int r = 0; r < p; ++r) members[r] = r;
  std::vector<std::string> errors(p);
  std::vector<std::thread> threads;
  for (int r = 0; r < p; ++r)
    threads.emplace_back([&, r] {
      try {
        Comm comm(world.group(group, members, r), group, nullptr);
        if (net) comm.set_network(net, 11);
        body(comm, r);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& e : errors) REQUIRE(e.empty());
}

}  // namespace lossytp::testing
