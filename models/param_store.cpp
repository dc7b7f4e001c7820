#include "models/param_store.h"

#include <stdexcept>

#include "kernels/ops.h"
#include "kernels/philox.h"

namespace lossytp {

size_t ParamSpec::numel() const {
  size_t n = 1;
  for (int64_t d : local) n *= static_cast<size_t>(d);
  return n;
}

int ParamStore::declare(std::string name, std::vector<int64_t> full, int shard_dim, Init init,
                        float std, bool weight_decay, int stride) {
  if (values_.defined()) throw std::logic_error("declare after allocate: " + name);
  ParamSpec s;
  s.name = std::move(name);
  s.full = std::move(full);
  s.shard_dim = shard_dim;
  s.init = init;
  s.std = std;
  s.weight_decay = weight_decay;
  s.stride = stride;
  s.local = s.full;
  if (shard_dim >= 0) {
    if (s.full[shard_dim] % (static_cast<int64_t>(tp_size_) * stride) != 0)
      throw std::invalid_argument("parameter " + s.name + " dim " + std::to_string(shard_dim) +
                                  " of size " + std::to_string(s.full[shard_dim]) +
                                  " is not divisible by tp " + std::to_string(tp_size_) +
                                  (stride > 1 ? " x " + std::to_string(stride) + " parts" : ""));
    s.local[shard_dim] /= tp_size_;
  }
  specs_.push_back(std::move(s));
  return static_cast<int>(specs_.size()) - 1;
}

void ParamStore::plan() {
  total_ = 0;
  for (ParamSpec& s : specs_) {
    s.offset = total_;
    // 16-float (64-byte) alignment for every parameter.
    total_ += (s.numel() + 15) / 16 * 16;
  }
}

void ParamStore::allocate() {
  plan();
  values_ = Tensor({static_cast<int64_t>(total_)}, device());
  grads_ = Tensor({static_cast<int64_t>(total_)}, device());
}

void ParamStore::pad_arenas(size_t multiple) {
  const size_t n = (total_ + multiple - 1) / multiple * multiple;
  if (n == values_.numel()) return;
  Tensor v({static_cast<int64_t>(n)}, device()), g({static_cast<int64_t>(n)}, device());  // zeroed
  ops::copy(device(), v.data(), values_.data(), total_);
  ops::copy(device(), g.data(), grads_.data(), total_);
  values_ = std::move(v);
  grads_ = std::move(g);
}

void ParamStore::init(uint64_t seed) {
  // Drawn on the host (the same numbers on every device), then copied to the device.
  Tensor host = device() == Device::CPU ? values_ : Tensor({static_cast<int64_t>(total_)});
  for (size_t pi = 0; pi < specs_.size(); ++pi) {
    const ParamSpec& s = specs_[pi];
    float* v = host.data() + s.offset;
    const size_t n = s.numel();
    if (s.init == Init::Zeros) { for (size_t i = 0; i < n; ++i) v[i] = 0.0f; continue; }
    if (s.init == Init::Ones) { for (size_t i = 0; i < n; ++i) v[i] = 1.0f; continue; }
    if (s.init == Init::Constant) { for (size_t i = 0; i < n; ++i) v[i] = s.std; continue; }
    const uint64_t stream = fnv1a64(s.name.c_str());
    // Map each local element to its index in the full matrix (row-major), then draw.
    // Shapes are 1-D or 2-D.
    const int64_t rows = s.local.size() == 2 ? s.local[0] : 1;
    const int64_t cols = s.local.back();
    const int64_t full_cols = s.full.back();
    // Local index i along the sharded dim -> full index: rank r holds slice r of each of the
    // `stride` parts (Megatron's partition stride; 1 = one contiguous slice).
    const int sd = s.shard_dim;
    const int64_t loc = sd >= 0 ? s.local[sd] : 1, part = loc / s.stride;
    auto full_of = [&](int64_t i) { return (i / part) * part * tp_size_ + tp_rank_ * part + i % part; };
    const bool row_shard = sd == 0 && s.local.size() == 2;
    const bool col_shard = sd == static_cast<int>(s.local.size()) - 1;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t fr = row_shard ? full_of(r) : r, fc = col_shard ? full_of(c) : c;
        uint64_t full_index = static_cast<uint64_t>(fr * full_cols + fc);
        v[r * cols + c] = s.std * philox_normal(seed, stream, full_index);
      }
  }
  if (device() != Device::CPU)  // the arena may be padded (pad_arenas) past total_
    values_.flat(0, total_, {static_cast<int64_t>(total_)}).copy_from_host(host.data());
}

namespace {
// Calls f(local index, full index) for every element of the rank's shard (1-D or 2-D), with the
// same local -> full map as init().
template <class F>
void for_each_shard_element(const ParamSpec& s, int tp_rank, int tp_size, F f) {
  const int64_t rows = s.local.size() == 2 ? s.local[0] : 1, cols = s.local.back();
  const int64_t full_cols = s.full.back();
  const int sd = s.shard_dim;
  const int64_t loc = sd >= 0 ? s.local[sd] : 1, part = loc / s.stride;
  auto full_of = [&](int64_t i) { return (i / part) * part * tp_size + tp_rank * part + i % part; };
  const bool row_shard = sd == 0 && s.local.size() == 2;
  const bool col_shard = sd == static_cast<int>(s.local.size()) - 1;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t fr = row_shard ? full_of(r) : r, fc = col_shard ? full_of(c) : c;
      f(static_cast<size_t>(r * cols + c), static_cast<size_t>(fr * full_cols + fc));
    }
}
}  // namespace

void copy_shard(const ParamSpec& s, int tp_rank, int tp_size, const float* full, float* local) {
  for_each_shard_element(s, tp_rank, tp_size, [&](size_t l, size_t g) { local[l] = full[g]; });
}

void place_shard(const ParamSpec& s, int tp_rank, int tp_size, const float* local, float* full) {
  for_each_shard_element(s, tp_rank, tp_size, [&](size_t l, size_t g) { full[g] = local[l]; });
}

double ParamStore::grad_sq_contribution() const {
  std::vector<std::pair<const float*, size_t>> spans;
  for (const ParamSpec& p : specs_)
    if (!p.pipeline_copy && (p.shard_dim >= 0 || tp_rank_ == 0)) spans.emplace_back(grads_.data() + p.offset, p.numel());
  return ops::sum_squares(device(), spans);
}

}  // namespace lossytp
