// Several virtual ranks as threads of one process: the backend behind `--virtual-ranks N`. A
// LocalWorld holds what N threads share; each thread gets Backends for its groups (a group is a
// list of world ranks, the same list on every member). Collectives meet at a barrier over
// pointers the members publish and reduce in member order, so every member gets bit-identical
// results; point-to-point messages go through mailboxes (a send never blocks). Every wait honours
// the backend's timeout and throws CommTimeout, like the MPI backend. Needs no MPI, so any layout
// and network model runs in one process (and later on one GPU).
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "sim/backend.h"

namespace lossytp {

class LocalWorld {
 public:
  explicit LocalWorld(int size);
  int size() const { return size_; }
  // The Backend of the group `name` ("tp", "dp", "run") made of `members` (world ranks, the
  // same list on every member), for the member `world_rank`.
  std::unique_ptr<Backend> group(const std::string& name, const std::vector<int>& members,
                                 int world_rank);

  struct Group;  // shared state of one group (sim/local_backend.cpp)

 private:
  int size_;
  std::mutex mu_;
  std::map<std::pair<std::string, std::vector<int>>, std::shared_ptr<Group>> groups_;
};

}  // namespace lossytp
