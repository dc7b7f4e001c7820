// Throughput of the network models' mask generation (packets per second on one core), and of
// NetSpec::plan for a typical TP message. Run: build/bench/bench_netmodel_masks [packets]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "netmodels/netmodel.h"
#include "netmodels/sample.h"
#include "sim/ring_collectives.h"

using namespace lossytp::net;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Masks of `total` packets in messages of `per` packets (consecutive calls on one link).
void masks(const char* text, size_t total, size_t per) {
  NetSpec spec = parse_net_spec(text);
  std::vector<uint8_t> buf(per);
  Message m;
  m.group = "tp";
  m.site = "layer0.mlp.fc2.fwd";
  m.src = 0;
  m.dst = 1;
  m.elem_bytes = 1;
  size_t lost = 0;
  const double t0 = now();
  for (size_t done = 0; done < total; done += per) {
    std::fill(buf.begin(), buf.end(), 0);
    for (const auto& model : spec.models) model->drop_packets(m, 1234, per, buf.data());
    for (uint8_t x : buf) lost += x;
    ++m.call;
  }
  const double dt = now() - t0;
  std::printf("%-40s %8zu pkt/msg  %7.1f Mpackets/s  (loss %.4f)\n", text, per, total / dt / 1e6,
              static_cast<double>(lost) / total);
}

void plans(const char* text, size_t bytes, int reps) {
  NetSpec spec = parse_net_spec(text);
  Message m;
  m.group = "tp";
  m.site = "layer0.mlp.fc2.fwd";
  m.src = 0;
  m.dst = 1;
  m.bytes = bytes;
  size_t lost = 0;
  const double t0 = now();
  for (int i = 0; i < reps; ++i) {
    m.call = i;
    lost += spec.plan(m, 1234).lost;
  }
  const double dt = now() - t0;
  std::printf("plan %-35s %8zu B/msg   %7.2f us/message (%.1f Mpackets/s)  [%zu lost]\n", text,
              bytes, dt / reps * 1e6, spec.packet_count(bytes) * double(reps) / dt / 1e6, lost);
}

// What a lossy ring hop costs on top of moving the data: the mask (plan) and applying it to the
// received block (reduce with zero fill), in GB/s of tensor on one core.
void apply_rate(const char* text, size_t bytes, int reps) {
  NetSpec spec = parse_net_spec(text);
  Message m;
  m.group = "tp";
  m.site = "layer0.mlp.fc2.fwd";
  m.src = 0;
  m.dst = 1;
  m.bytes = bytes;
  const size_t n = bytes / sizeof(float);
  std::vector<float> own(n, 1.0f), recv(n, 2.0f);
  size_t filled = 0;
  const double t0 = now();
  for (int i = 0; i < reps; ++i) {
    m.call = i;
    DeliveryPlan plan = spec.plan(m, 1234);
    filled += lossytp::apply_delivery(own.data(), recv.data(), n, plan, spec.fill, true,
                                      lossytp::ReduceOp::Sum, 1.0f, nullptr);
  }
  const double dt = now() - t0;
  std::printf("mask+apply %-29s %8zu B/msg   %7.2f GB/s of tensor per core  (%.4f filled)\n", text,
              bytes, double(bytes) * reps / dt / 1e9, double(filled) / (double(n) * reps));
}

}  // namespace

int main(int argc, char** argv) {
  const size_t total = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 100000000ull;
  masks("drop:rate=0.01", total, 1 << 20);
  masks("drop:rate=0.01", total, 1024);
  masks("drop:rate=0.01", total, 64);
  masks("ge:preset=one", total, 1 << 20);
  masks("ge:p=0.02,r=0.2,k=0.99,h=0.3", total, 1 << 20);
  masks("ge:preset=one,step=message", total, 64);
  masks("ge:preset=one,step=message", total, 1024);
  masks("ge:p=0.02,r=0.2,k=0.99,h=0.3,step=message", total, 1024);
  plans("drop:rate=0.01", 4 << 20, 200);
  plans("drop:rate=0.01,transport=reliable", 4 << 20, 200);
  plans("exact", 4 << 20, 200);
  apply_rate("exact", 4 << 20, 200);
  apply_rate("drop:rate=0.01", 4 << 20, 200);
  apply_rate("ge:preset=one", 4 << 20, 200);
  std::printf("\n%s", format_sample(sample_link(parse_net_spec("ge:preset=one"), 10000000, 1), false).c_str());
  return 0;
}
