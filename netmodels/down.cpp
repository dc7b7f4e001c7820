// down:from=I,to=J[,rounds=R] -- a link outage: every packet of every message of training
// iterations I..J (inclusive, 1-based as the logs and metrics.h5 number them: Message::iteration
// is 0-based, so iterations I-1..J-1 inside lossytp) is lost; outside the window nothing is.
// With links= (any model) only the chosen links go down, e.g. links=0-*|*-0 for rank 0.
//
// Retransmissions: the link stays down for the first R retransmission rounds of a message
// (Message::attempt < R loses everything) and is up again from round R on. Under
// transport=lossy that changes nothing (there is no round); under transport=reliable the message
// waits R rounds (R timeouts plus the resent bytes) and then arrives exact: only time is lost;
// under transport=bounded it arrives when those R rounds fit in the deadline, else it is lost.
#include <limits>

#include "netmodels/registry.h"

namespace lossytp::net {

namespace {

class Down final : public LossModel {
 public:
  Down(int64_t from, int64_t to, int rounds) : from_(from), to_(to), rounds_(rounds) {}
  std::string describe() const override {
    return "down:from=" + std::to_string(from_) + ",to=" + std::to_string(to_) +
           (rounds_ != kDefaultRounds ? ",rounds=" + std::to_string(rounds_) : "");
  }
  void drop_packets(const Message& m, uint64_t, size_t n, uint8_t* lost) const override {
    const int64_t it = m.iteration + 1;  // the 1-based iteration users see
    if (it < from_ || it > to_ || m.attempt >= rounds_) return;
    for (size_t i = 0; i < n; ++i) lost[i] = 1;
  }
  // Outside the window nothing is lost and a run's average depends on its length: the
  // theory of a steady link is that of an up link (inside the window: 1, one burst per message).
  double stationary_loss_rate() const override { return 0.0; }
  double mean_burst_length() const override { return 0.0; }

  static constexpr int kDefaultRounds = 10;

 private:
  int64_t from_, to_;
  int rounds_;
};

}  // namespace

void make_down(const KeyValues& keys, NetSpec& spec) {
  KeyReader k("down", keys);
  const double big = 1e15;  // iterations: integers, exactly representable
  auto integer = [&](const char* key, double v) {
    if (v != static_cast<double>(static_cast<int64_t>(v)))
      k.fail(std::string(key) + "=" + k.raw(key) + " is not an integer");
    return static_cast<int64_t>(v);
  };
  const int64_t from = integer("from", k.required("from", 1, big));
  const int64_t to = integer("to", k.required("to", 1, big));
  const int rounds = static_cast<int>(integer(
      "rounds", k.number("rounds", Down::kDefaultRounds, 1, kMaxRetransmissionRounds)));
  k.finish();
  if (from > to)
    k.fail("from=" + std::to_string(from) + " is after to=" + std::to_string(to) +
           " (the window is iterations from..to, inclusive)");
  spec.models.push_back(std::make_shared<Down>(from, to, rounds));
}

}  // namespace lossytp::net
