// What the receiver of a ring hop does with a block whose packets were partly lost: each fill
// policy, for a reduction hop and for a gather hop.
#include <catch2/catch.hpp>

#include <vector>

#include "sim/ring_collectives.h"

using namespace lossytp;

namespace {
net::DeliveryPlan plan_losing_middle_packet() {
  net::DeliveryPlan p;
  p.packet_bytes = 8;  // two floats per packet
  p.packets = 3;
  p.lost = 1;
  p.lost_mask = {0, 1, 0};
  return p;
}
const std::vector<float> kRecv = {1, 2, 3, 4, 5, 6};
const std::vector<float> kOwn = {10, 20, 30, 40, 50, 60};
}  // namespace

TEST_CASE("fill=zero: a lost reduction contribution adds nothing, a lost gathered value is 0", "[fill]") {
  auto own = kOwn;
  size_t filled = apply_delivery(own.data(), kRecv.data(), 6, plan_losing_middle_packet(),
                                 net::Fill::Zero, true, ReduceOp::Sum, 1.0f, nullptr);
  CHECK(filled == 2);
  CHECK(own == std::vector<float>{11, 22, 30, 40, 55, 66});
  own = kOwn;
  apply_delivery(own.data(), kRecv.data(), 6, plan_losing_middle_packet(), net::Fill::Zero, false,
                 ReduceOp::Sum, 1.0f, nullptr);
  CHECK(own == std::vector<float>{1, 2, 0, 0, 5, 6});
}

TEST_CASE("fill=local: the receiver keeps its own value", "[fill]") {
  auto own = kOwn;
  apply_delivery(own.data(), kRecv.data(), 6, plan_losing_middle_packet(), net::Fill::Local, false,
                 ReduceOp::Sum, 1.0f, nullptr);
  CHECK(own == std::vector<float>{1, 2, 30, 40, 5, 6});
  own = kOwn;
  apply_delivery(own.data(), kRecv.data(), 6, plan_losing_middle_packet(), net::Fill::Local, true,
                 ReduceOp::Max, 1.0f, nullptr);
  CHECK(own == std::vector<float>{10, 20, 30, 40, 50, 60});
}

TEST_CASE("fill=rescale: delivered contributions are divided by the delivery probability", "[fill]") {
  auto own = kOwn;
  apply_delivery(own.data(), kRecv.data(), 6, plan_losing_middle_packet(), net::Fill::Rescale, true,
                 ReduceOp::Sum, 2.0f, nullptr);
  CHECK(own == std::vector<float>{12, 24, 30, 40, 60, 72});
}

TEST_CASE("fill=stale: the last value that arrived at the position is used", "[fill]") {
  std::vector<float> stale = {0, 0, 0, 0, 0, 0};
  net::DeliveryPlan all;
  all.packet_bytes = 8;
  all.packets = 3;
  auto own = kOwn;
  // first message arrives whole and is remembered
  apply_delivery(own.data(), kRecv.data(), 6, all, net::Fill::Stale, false, ReduceOp::Sum, 1.0f, stale.data());
  CHECK(stale == kRecv);
  // the next loses its middle packet: the stale values stand in
  std::vector<float> recv2 = {7, 7, 7, 7, 7, 7};
  own = kOwn;
  apply_delivery(own.data(), recv2.data(), 6, plan_losing_middle_packet(), net::Fill::Stale, false,
                 ReduceOp::Sum, 1.0f, stale.data());
  CHECK(own == std::vector<float>{7, 7, 3, 4, 7, 7});
  // and in a reduction the stale partial sum is added
  own = kOwn;
  apply_delivery(own.data(), recv2.data(), 6, plan_losing_middle_packet(), net::Fill::Stale, true,
                 ReduceOp::Sum, 1.0f, stale.data());
  CHECK(own == std::vector<float>{17, 27, 33, 44, 57, 67});
}

TEST_CASE("a plan with nothing lost delivers everything", "[fill]") {
  net::DeliveryPlan all;
  all.packet_bytes = 1450;
  all.packets = 1;
  auto own = kOwn;
  CHECK(apply_delivery(own.data(), kRecv.data(), 6, all, net::Fill::Zero, true, ReduceOp::Sum, 1.0f, nullptr) == 0);
  CHECK(own == std::vector<float>{11, 22, 33, 44, 55, 66});
}
