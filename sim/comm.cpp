#include "sim/comm.h"

namespace lossytp {

void CommStats::add(const std::string& site, int64_t messages, int64_t bytes) {
  SiteCounters& c = sites_[site];
  c.calls += 1;
  c.messages += messages;
  c.bytes += bytes;
}

Comm::Comm(std::unique_ptr<Backend> backend, std::string group, std::shared_ptr<CommStats> stats)
    : backend_(std::move(backend)), group_(std::move(group)), stats_(std::move(stats)) {
  if (!stats_) stats_ = std::make_shared<CommStats>();
}

void Comm::all_reduce(float* buf, size_t n, const std::string& site, ReduceOp op) {
  const int64_t p = size();
  ++call_;
  if (p == 1) return;
  // Ring all-reduce: p-1 reduce-scatter hops then p-1 all-gather hops of ceil(n/p) elements.
  const int64_t block = (static_cast<int64_t>(n) + p - 1) / p;
  stats_->add(site, 2 * (p - 1), 2 * (p - 1) * block * static_cast<int64_t>(sizeof(float)));
  backend_->all_reduce(buf, n, op);
}

void Comm::all_gather(const float* in, float* out, size_t n_per_rank, const std::string& site) {
  const int64_t p = size();
  ++call_;
  stats_->add(site, p - 1, (p - 1) * static_cast<int64_t>(n_per_rank * sizeof(float)));
  backend_->all_gather(in, out, n_per_rank);
}

void Comm::reduce_scatter(const float* in, float* out, size_t n_per_rank,
                          const std::string& site) {
  const int64_t p = size();
  ++call_;
  stats_->add(site, p - 1, (p - 1) * static_cast<int64_t>(n_per_rank * sizeof(float)));
  backend_->reduce_scatter(in, out, n_per_rank);
}

void Comm::broadcast(float* buf, size_t n, int root, const std::string& site) {
  const int64_t p = size();
  ++call_;
  if (p == 1) return;
  if (rank() == root) stats_->add(site, p - 1, (p - 1) * static_cast<int64_t>(n * sizeof(float)));
  backend_->broadcast(buf, n * sizeof(float), root);
}

void Comm::send(const float* buf, size_t n, int dst, const std::string& site) {
  ++call_;
  stats_->add(site, 1, static_cast<int64_t>(n * sizeof(float)));
  backend_->send(buf, n * sizeof(float), dst, 0);
}

void Comm::recv(float* buf, size_t n, int src, const std::string& site) {
  ++call_;
  backend_->recv(buf, n * sizeof(float), src, 0);
}

}  // namespace lossytp
