// Comm: the communicator model code talks to. Every call names its site ("layer3.mlp.fc2.fwd",
// "dp.grad"), is counted per site, and goes through the Backend of its group. This is the one
// place where a network model (netmodels/) will act on every message of every collective.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "sim/backend.h"

namespace lossytp {

// Traffic of one site as this rank sees it. Messages and bytes are what this rank puts on the
// wire when the collective runs as the ring algorithm NCCL uses (all-reduce: 2(p-1) messages of
// n/p elements; all-gather and reduce-scatter: p-1 messages of one block).
struct SiteCounters {
  int64_t calls = 0;
  int64_t messages = 0;
  int64_t bytes = 0;
};

class CommStats {
 public:
  void add(const std::string& site, int64_t messages, int64_t bytes);
  const std::map<std::string, SiteCounters>& sites() const { return sites_; }
  void clear() { sites_.clear(); }

 private:
  std::map<std::string, SiteCounters> sites_;
};

class Comm {
 public:
  // group: "tp" or "dp" (prefix of scopes); stats may be shared by several Comms of a rank.
  Comm(std::unique_ptr<Backend> backend, std::string group, std::shared_ptr<CommStats> stats);

  int rank() const { return backend_->rank(); }
  int size() const { return backend_->size(); }
  const std::string& group() const { return group_; }
  Backend& backend() { return *backend_; }
  CommStats& stats() { return *stats_; }

  // The iteration about to run; resets the per-step call index that, with the site, names a
  // message uniquely (the network models' randomness is keyed by it).
  void begin_step(int64_t iteration) { iteration_ = iteration; call_ = 0; }
  int64_t iteration() const { return iteration_; }

  void all_reduce(float* buf, size_t n, const std::string& site, ReduceOp op = ReduceOp::Sum);
  void all_gather(const float* in, float* out, size_t n_per_rank, const std::string& site);
  void reduce_scatter(const float* in, float* out, size_t n_per_rank, const std::string& site);
  void broadcast(float* buf, size_t n, int root, const std::string& site);
  void send(const float* buf, size_t n, int dst, const std::string& site);
  void recv(float* buf, size_t n, int src, const std::string& site);

 private:
  std::unique_ptr<Backend> backend_;
  std::string group_;
  std::shared_ptr<CommStats> stats_;
  int64_t iteration_ = 0;
  int64_t call_ = 0;
};

}  // namespace lossytp
