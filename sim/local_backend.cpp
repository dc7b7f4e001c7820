#include "sim/local_backend.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <tuple>
#include <string>

namespace lossytp {

struct LocalWorld::Group {
  explicit Group(std::vector<int> m) : members(std::move(m)), slots(members.size(), nullptr) {}
  std::vector<int> members;
  std::mutex mu;
  std::condition_variable cv;
  // barrier
  int arrived = 0;
  uint64_t generation = 0;
  // what each member published for the current collective
  std::vector<const void*> slots;
  // point-to-point: (src, dst, tag) -> queue of messages
  std::map<std::tuple<int, int, int>, std::deque<std::vector<char>>> mail;
};

namespace {

class LocalBackend final : public Backend {
 public:
  LocalBackend(std::shared_ptr<LocalWorld::Group> g, int rank) : g_(std::move(g)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(g_->members.size()); }
  std::string name() const override { return "local"; }
  std::vector<int> world_ranks() const override { return g_->members; }

  void send(const void* buf, size_t bytes, int dst, int tag) override {
    std::vector<char> msg(static_cast<const char*>(buf), static_cast<const char*>(buf) + bytes);
    {
      std::lock_guard<std::mutex> lock(g_->mu);
      g_->mail[{rank_, dst, tag}].push_back(std::move(msg));
    }
    g_->cv.notify_all();
  }

  void recv(void* buf, size_t bytes, int src, int tag) override {
    std::unique_lock<std::mutex> lock(g_->mu);
    auto& q = g_->mail[{src, rank_, tag}];
    wait(lock, [&] { return !q.empty(); }, "recv");
    std::vector<char> msg = std::move(q.front());
    q.pop_front();
    if (msg.size() != bytes)
      throw std::runtime_error("local recv: expected " + std::to_string(bytes) + " bytes, got " +
                               std::to_string(msg.size()));
    if (bytes) std::memcpy(buf, msg.data(), bytes);
  }

  void sendrecv(const void* sbuf, size_t sbytes, int dst, void* rbuf, size_t rbytes, int src,
                int tag) override {
    send(sbuf, sbytes, dst, tag);  // eager: never blocks, so no deadlock
    recv(rbuf, rbytes, src, tag);
  }

  void all_reduce(float* buf, size_t n, ReduceOp op) override { reduce_impl(buf, n, op); }
  void all_reduce_f64(double* buf, size_t n, ReduceOp op) override { reduce_impl(buf, n, op); }

  void all_gather(const float* in, float* out, size_t m) override {
    publish(in);
    for (int r = 0; r < size(); ++r)
      std::memcpy(out + static_cast<size_t>(r) * m, g_->slots[r], m * sizeof(float));
    barrier();  // everyone has read the others' blocks
  }

  void reduce_scatter(const float* in, float* out, size_t m) override {
    publish(in);
    const size_t off = static_cast<size_t>(rank_) * m;
    std::vector<float> acc(m, 0.0f);
    for (int r = 0; r < size(); ++r) {
      const float* src = static_cast<const float*>(g_->slots[r]) + off;
      for (size_t i = 0; i < m; ++i) acc[i] += src[i];
    }
    barrier();
    std::memcpy(out, acc.data(), m * sizeof(float));
  }

  void broadcast(void* buf, size_t bytes, int root) override {
    publish(buf);
    if (rank_ != root) std::memcpy(buf, g_->slots[root], bytes);
    barrier();
  }

  void barrier() override {
    std::unique_lock<std::mutex> lock(g_->mu);
    const uint64_t gen = g_->generation;
    if (++g_->arrived == size()) {
      g_->arrived = 0;
      ++g_->generation;
      g_->cv.notify_all();
      return;
    }
    wait(lock, [&] { return g_->generation != gen; }, "barrier");
  }

 private:
  template <typename T>
  void reduce_impl(T* buf, size_t n, ReduceOp op) {
    if (size() == 1) return;
    publish(buf);
    // Every member reduces in member order: bit-identical results everywhere.
    std::vector<T> acc(static_cast<const T*>(g_->slots[0]), static_cast<const T*>(g_->slots[0]) + n);
    for (int r = 1; r < size(); ++r) {
      const T* src = static_cast<const T*>(g_->slots[r]);
      if (op == ReduceOp::Sum) for (size_t i = 0; i < n; ++i) acc[i] += src[i];
      else for (size_t i = 0; i < n; ++i) acc[i] = std::max(acc[i], src[i]);
    }
    barrier();  // nobody overwrites its buffer before all have read it
    std::memcpy(buf, acc.data(), n * sizeof(T));
  }

  // Publishes this member's pointer and waits until every member has.
  void publish(const void* p) {
    {
      std::lock_guard<std::mutex> lock(g_->mu);
      g_->slots[rank_] = p;
    }
    barrier();
  }

  template <typename Pred>
  void wait(std::unique_lock<std::mutex>& lock, Pred ready, const char* what) {
    if (timeout_s_ <= 0) {
      g_->cv.wait(lock, ready);
      return;
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
    if (!g_->cv.wait_until(lock, deadline, ready)) {
      std::string ranks;
      for (int r : g_->members) ranks += (ranks.empty() ? "" : ",") + std::to_string(r);
      throw CommTimeout(std::string(what) + " waited more than " + std::to_string(timeout_s_) +
                        " s for its peers (virtual ranks " + ranks + ")");
    }
  }

  std::shared_ptr<LocalWorld::Group> g_;
  int rank_;
};

}  // namespace

LocalWorld::LocalWorld(int size) : size_(size) {
  if (size < 1) throw std::invalid_argument("--virtual-ranks must be >= 1");
}

std::unique_ptr<Backend> LocalWorld::group(const std::string& name, const std::vector<int>& members,
                                           int world_rank) {
  auto it = std::find(members.begin(), members.end(), world_rank);
  if (it == members.end()) throw std::logic_error("rank is not a member of its group");
  std::shared_ptr<Group> g;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto& slot = groups_[{name, members}];
    if (!slot) slot = std::make_shared<Group>(members);
    g = slot;
  }
  return std::make_unique<LocalBackend>(g, static_cast<int>(it - members.begin()));
}

}  // namespace lossytp
