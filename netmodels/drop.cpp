// drop:rate=R -- i.i.d. packet loss: every packet is lost with probability R, independently of
// every other packet, message and link.
#include "netmodels/registry.h"

namespace lossytp::net {

namespace {

class Drop final : public LossModel {
 public:
  explicit Drop(double rate) : rate_(rate), t_(prob_threshold(rate)) {}
  std::string describe() const override { return "drop:rate=" + format_double(rate_); }
  void drop_packets(const Message& m, uint64_t seed, size_t n, uint8_t* lost) const override {
    iid_loss(message_stream(m, seed, index), 0, t_, n, lost);
  }
  double stationary_loss_rate() const override { return rate_; }
  // Runs of an i.i.d. event are geometric: mean 1 / (1 - R).
  double mean_burst_length() const override { return rate_ > 0 ? 1.0 / (1.0 - rate_) : 0.0; }

 private:
  double rate_;
  uint64_t t_;
};

}  // namespace

void make_drop(const KeyValues& keys, NetSpec& spec) {
  KeyReader k("drop", keys);
  const double rate = k.required("rate", 0.0, 1.0);
  k.finish();
  spec.models.push_back(std::make_shared<Drop>(rate));
}

}  // namespace lossytp::net
