#include "sim/local_backend.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <tuple>
#include <string>

#include "kernels/ops.h"
#include "sim/device_buffer.h"

#ifdef LOSSYTP_HAVE_CUDA
#include "kernels/cuda/ops.h"
#endif

namespace lossytp {

struct LocalWorld::Group {
  Group(std::vector<int> m, Device d) : members(std::move(m)), dev(d), slots(members.size(), nullptr) {}
  std::vector<int> members;
  Device dev;
  std::mutex mu;
  std::condition_variable cv;
  // barrier
  int arrived = 0;
  uint64_t generation = 0;
  // what each member published for the current collective
  std::vector<const void*> slots;
  // point-to-point: (src, dst, tag) -> queue of messages; a CUDA world's payloads sit in device
  // staging buffers that return to `pool` once the receiver has queued its copy out of them
  struct Mail {
    std::vector<char> host;
    DeviceBuffer staged;
    size_t bytes = 0;
  };
  std::map<std::tuple<int, int, int>, std::deque<Mail>> mail;
  std::vector<DeviceBuffer> pool;
};

namespace {

class LocalBackend final : public Backend {
 public:
  LocalBackend(std::shared_ptr<LocalWorld::Group> g, int rank)
      : g_(std::move(g)), rank_(rank), acc_(g_->dev, 0) {}
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(g_->members.size()); }
  std::string name() const override { return "local"; }
  Device device() const override { return g_->dev; }
  std::vector<int> world_ranks() const override { return g_->members; }

  void send(const void* buf, size_t bytes, int dst, int tag) override {
    LocalWorld::Group::Mail msg;
    msg.bytes = bytes;
    if (cuda()) {
      // Queued copy into staging; the receiver's copy out is queued after it (it pops the
      // message only once this thread has pushed it, below).
      msg.staged = take_staging(bytes);
      copy_bytes(Device::CUDA, msg.staged.data(), buf, bytes);
    } else {
      msg.host.assign(static_cast<const char*>(buf), static_cast<const char*>(buf) + bytes);
    }
    {
      std::lock_guard<std::mutex> lock(g_->mu);
      g_->mail[{rank_, dst, tag}].push_back(std::move(msg));
    }
    g_->cv.notify_all();
  }

  void recv(void* buf, size_t bytes, int src, int tag) override {
    LocalWorld::Group::Mail msg;
    {
      std::unique_lock<std::mutex> lock(g_->mu);
      auto& q = g_->mail[{src, rank_, tag}];
      wait(lock, [&] { return !q.empty(); }, "recv");
      msg = std::move(q.front());
      q.pop_front();
    }
    if (msg.bytes != bytes)
      throw std::runtime_error("local recv: expected " + std::to_string(bytes) + " bytes, got " +
                               std::to_string(msg.bytes));
    if (!cuda()) {
      if (bytes) std::memcpy(buf, msg.host.data(), bytes);
      return;
    }
    copy_bytes(Device::CUDA, buf, msg.staged.data(), bytes);
    // Back to the pool: a later sender's write into it is queued after this read.
    std::lock_guard<std::mutex> lock(g_->mu);
    g_->pool.push_back(std::move(msg.staged));
  }

  void sendrecv(const void* sbuf, size_t sbytes, int dst, void* rbuf, size_t rbytes, int src,
                int tag) override {
    send(sbuf, sbytes, dst, tag);  // eager: never blocks, so no deadlock
    recv(rbuf, rbytes, src, tag);
  }

  void all_reduce(float* buf, size_t n, ReduceOp op) override {
    if (cuda()) device_reduce(buf, n, op);
    else reduce_impl(buf, n, op);
  }
  void all_reduce_f64(double* buf, size_t n, ReduceOp op) override { reduce_impl(buf, n, op); }

  void all_gather(const float* in, float* out, size_t m) override {
    publish(in);
    for (int r = 0; r < size(); ++r) {
      float* dst = out + static_cast<size_t>(r) * m;
      const float* src = static_cast<const float*>(g_->slots[r]);
      if (cuda()) ops::copy(Device::CUDA, dst, src, m);
      else std::memcpy(dst, src, m * sizeof(float));
    }
    barrier();  // everyone has read (queued its reads of) the others' blocks
  }

  void reduce_scatter(const float* in, float* out, size_t m) override {
    publish(in);
    const size_t off = static_cast<size_t>(rank_) * m;
    if (cuda()) {
      // Same order as the host code below: 0 + member 0 + member 1 + ...
      float* acc = acc_.floats(std::max<size_t>(m, 1));
      ops::fill(Device::CUDA, acc, 0.0f, m);
      for (int r = 0; r < size(); ++r)
        ops::add_inplace(Device::CUDA, acc, static_cast<const float*>(g_->slots[r]) + off, m);
      barrier();
      ops::copy(Device::CUDA, out, acc, m);
      return;
    }
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
    if (rank_ != root) copy_bytes(g_->dev, buf, g_->slots[root], bytes);
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
  bool cuda() const { return g_->dev == Device::CUDA; }

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

  // reduce_impl on device buffers: the same member order, into this member's device
  // accumulator. The barrier comes after every member has queued its reads, so the writes
  // queued after it run after them.
  void device_reduce(float* buf, size_t n, ReduceOp op) {
    if (size() == 1) return;
    publish(buf);
    float* acc = acc_.floats(std::max<size_t>(n, 1));
    ops::copy(Device::CUDA, acc, static_cast<const float*>(g_->slots[0]), n);
    for (int r = 1; r < size(); ++r) {
      const float* src = static_cast<const float*>(g_->slots[r]);
      if (op == ReduceOp::Sum) ops::add_inplace(Device::CUDA, acc, src, n);
      else ops::max_inplace(Device::CUDA, acc, src, n);
    }
    barrier();
    ops::copy(Device::CUDA, buf, acc, n);
  }

  // A staging buffer of at least `bytes` from the group's pool: the smallest that fits, else the
  // largest grown (cudaFree waits for queued work), else a new one.
  DeviceBuffer take_staging(size_t bytes) {
    DeviceBuffer b;
    {
      std::lock_guard<std::mutex> lock(g_->mu);
      auto& pool = g_->pool;
      auto best = pool.end();
      for (auto it = pool.begin(); it != pool.end(); ++it) {
        const bool fits = it->bytes() >= bytes;
        if (best == pool.end()) { best = it; continue; }
        const bool best_fits = best->bytes() >= bytes;
        if (fits && (!best_fits || it->bytes() < best->bytes())) best = it;
        else if (!fits && !best_fits && it->bytes() > best->bytes()) best = it;
      }
      if (best != pool.end()) {
        b = std::move(*best);
        pool.erase(best);
      }
    }
    if (b.bytes() == 0) b = DeviceBuffer(Device::CUDA, 0);
    b.reserve(std::max<size_t>(bytes, 1));
    return b;
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
    // In slices, so that wait_check_ can give up the wait (a peer failed).
    while (wait_check_ && !ready() && std::chrono::steady_clock::now() < deadline) {
      if (g_->cv.wait_until(lock, std::min<std::decay_t<decltype(deadline)>>(deadline, std::chrono::steady_clock::now() + std::chrono::milliseconds(100)), ready))
        return;
      lock.unlock();  // the check reads files: not under the group's lock
      try {
        wait_check_();
      } catch (...) {
        lock.lock();
        throw;
      }
      lock.lock();
    }
    if (!g_->cv.wait_until(lock, deadline, ready)) {
      std::string ranks;
      for (int r : g_->members) ranks += (ranks.empty() ? "" : ",") + std::to_string(r);
      throw CommTimeout(std::string(what) + " waited more than " + std::to_string(timeout_s_) +
                        " s for its peers (virtual ranks " + ranks + ")");
    }
  }

  std::shared_ptr<LocalWorld::Group> g_;
  int rank_;
  DeviceBuffer acc_;  // device accumulator of the float reductions (CUDA world)
};

}  // namespace

LocalWorld::LocalWorld(int size, Device dev) : size_(size), dev_(dev) {
  if (size < 1) throw std::invalid_argument("--virtual-ranks must be >= 1");
  if (dev != Device::CUDA) return;
#ifdef LOSSYTP_HAVE_CUDA
  if (!cuda::device_available()) throw std::runtime_error("virtual ranks on the GPU: no CUDA device is available");
  gpu_ = cuda::current_device();
#else
  throw std::runtime_error("virtual ranks on the GPU need a build with CUDA (CMake found no nvcc/NCCL)");
#endif
}

std::unique_ptr<Backend> LocalWorld::group(const std::string& name, const std::vector<int>& members,
                                           int world_rank) {
  auto it = std::find(members.begin(), members.end(), world_rank);
  if (it == members.end()) throw std::logic_error("rank is not a member of its group");
#ifdef LOSSYTP_HAVE_CUDA
  if (dev_ == Device::CUDA) cuda::set_device(gpu_);
#endif
  std::shared_ptr<Group> g;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto& slot = groups_[{name, members}];
    if (!slot) slot = std::make_shared<Group>(members, dev_);
    g = slot;
  }
  return std::make_unique<LocalBackend>(g, static_cast<int>(it - members.begin()));
}

}  // namespace lossytp
