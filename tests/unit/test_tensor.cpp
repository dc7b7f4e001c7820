// Tensor: views share storage, copies do not, and the device tag travels with the data.
#include <catch2/catch.hpp>

#include <cstdint>

#include "sim/tensor.h"

using namespace lossytp;

TEST_CASE("tensor views share storage; clones and copies do not", "[tensor]") {
  Tensor t({4, 3});
  CHECK(t.numel() == 12);
  CHECK(reinterpret_cast<uintptr_t>(t.data()) % 64 == 0);
  for (size_t i = 0; i < 12; ++i) CHECK(t.data()[i] == 0.0f);  // zero-initialised
  for (size_t i = 0; i < 12; ++i) t.data()[i] = static_cast<float>(i);
  Tensor rows = t.slice(1, 3);
  CHECK(rows.shape() == std::vector<int64_t>{2, 3});
  CHECK(rows.data()[0] == 3.0f);
  rows.data()[0] = -1.0f;
  CHECK(t.data()[3] == -1.0f);  // same storage
  Tensor flat = t.view({12});
  CHECK(flat.data()[11] == 11.0f);
  Tensor part = t.flat(6, 4, {2, 2});
  CHECK(part.data()[0] == 6.0f);
  Tensor c = t.clone();
  c.data()[0] = 42.0f;
  CHECK(t.data()[0] == 0.0f);
  Tensor h = t.to(Device::CPU);
  CHECK(h.device() == Device::CPU);
  CHECK(h.data()[3] == -1.0f);
  float out[12];
  t.copy_to_host(out);
  CHECK(out[11] == 11.0f);
  CHECK_THROWS(t.view({5}));
  CHECK_THROWS(t.slice(2, 5));
  CHECK_THROWS(t.flat(10, 4, {4}));
}
