// Several virtual ranks as threads of one process: the backend behind `--virtual-ranks N`. A
// LocalWorld holds what N threads share; each thread gets Backends for its groups (a group is a
// list of world ranks, the same list on every member). Collectives meet at a barrier over
// pointers the members publish and reduce in member order, so every member gets bit-identical
// results; point-to-point messages go through mailboxes (a send never blocks). Every wait honours
// the backend's timeout and throws CommTimeout, like the MPI backend. Needs no MPI, so any layout
// and network model runs in one process.
//
// A CUDA world runs every virtual rank on the same GPU: send/recv/sendrecv, the float
// collectives and broadcast take device pointers (all_reduce_f64 stays on host doubles). All
// ranks queue their copies and kernels on the legacy default stream, which executes them in the
// order the threads submit them; the barriers order the submissions (every member has queued its
// reads of the others' buffers before anyone queues a write to its own), so nothing waits for
// the GPU on the host. Point-to-point messages travel in device staging buffers from a per-group
// pool (reused: no cudaMalloc per message once the pool has grown).
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/device.h"
#include "sim/backend.h"

namespace lossytp {

class LocalWorld {
 public:
  // dev = CUDA needs a build with CUDA and a GPU (std::runtime_error otherwise); the world's
  // GPU is the one current when it is created.
  explicit LocalWorld(int size, Device dev = Device::CPU);
  int size() const { return size_; }
  Device device() const { return dev_; }
  // The Backend of the group `name` ("tp", "dp", "run") made of `members` (world ranks, the
  // same list on every member), for the member `world_rank`. In a CUDA world it also makes the
  // world's GPU the calling thread's current device (threads start on device 0).
  std::unique_ptr<Backend> group(const std::string& name, const std::vector<int>& members,
                                 int world_rank);

  struct Group;  // shared state of one group (sim/local_backend.cpp)

 private:
  int size_;
  Device dev_;
  int gpu_ = 0;  // CUDA world: its device
  std::mutex mu_;
  std::map<std::pair<std::string, std::vector<int>>, std::shared_ptr<Group>> groups_;
};

}  // namespace lossytp
