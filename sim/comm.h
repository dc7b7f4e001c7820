// Comm: the communicator model code talks to. Every call names its site ("layer3.mlp.fc2.fwd",
// "dp.grad"), is counted per site, and goes through the Backend of its group. This is the one
// place where the network model (netmodels/) acts on every message of every collective:
//  - no model, a lossless model, or a site outside the model's scope: the backend's native
//    collective (no slowdown), with the traffic and link time it would take counted;
//  - mode=ring: the collective runs as the ring algorithm hop by hop over point-to-point
//    messages, and each hop's packets pass through the model (sim/ring_collectives.h);
//  - mode=endpoint: each rank's contribution is masked once, then the native collective.
// A Comm works on its backend's device: on CUDA every float buffer given to it is a device
// pointer, the plans are drawn on the host (same masks, same counters as on the CPU) and applied
// by kernels, and scratch, stale values and masks stay on the device.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/device.h"
#include "netmodels/link_states.h"
#include "netmodels/netmodel.h"
#include "sim/backend.h"
#include "sim/device_buffer.h"
#include "sim/ring_collectives.h"

namespace lossytp {

// Traffic of one site as this rank sees it. Messages and bytes are what this rank puts on the
// wire when the collective runs as the ring algorithm NCCL uses (all-reduce: 2(p-1) messages of
// n/p elements; all-gather and reduce-scatter: p-1 messages of one block). Packets, losses and
// fills count the messages this rank receives (endpoint mode: its own masked contribution).
struct SiteCounters {
  int64_t calls = 0;
  int64_t messages = 0;
  int64_t bytes = 0;
  int64_t packets = 0;
  int64_t packets_exposed = 0;  // packets the network model acted on (in scope)
  int64_t packets_lost = 0;
  int64_t retransmissions = 0;
  int64_t elements_filled = 0;
  double sim_seconds = 0.0;  // simulated time on the links, hops in sequence
};

class CommStats {
 public:
  SiteCounters& site(const std::string& name) { return sites_[name]; }
  const std::map<std::string, SiteCounters>& sites() const { return sites_; }
  void clear() { sites_.clear(); }
  // Totals over every site.
  SiteCounters total() const;

 private:
  std::map<std::string, SiteCounters> sites_;
};

// Values that last arrived at each position of a site, for fill=stale, on the Comm's device.
class StaleStore {
 public:
  explicit StaleStore(Device d = Device::CPU) : dev_(d) {}
  // A buffer of n floats for (site, phase), zero the first time it is asked for.
  float* get(const std::string& site, int phase, size_t n);

 private:
  Device dev_;
  std::map<std::pair<std::string, int>, DeviceBuffer> bufs_;
};

// Activation recompute (--recompute-granularity full, docs/models.md): the results of the
// collectives of one recomputed forward, in call order. The recomputed forward does not
// communicate: it replays these, so it meets the network exactly as the original forward did
// (same losses, same fills) and the backward's calls keep the numbers and packet fates they
// have without recompute. A tape keeps its storage from one step to the next.
class CollectiveTape {
 public:
  // Floats held (results of calls in groups of more than one rank; those of one rank are local).
  size_t floats() const;
  size_t calls() const { return used_; }

 private:
  friend class Comm;
  struct Entry {
    std::string site;
    size_t n = 0;  // floats of the result
    DeviceBuffer data;
  };
  std::vector<Entry> entries_;  // [0, used_) recorded; storage beyond is kept for reuse
  size_t used_ = 0;
  size_t pos_ = 0;  // next entry to replay
};

class Comm {
 public:
  // group: "tp" or "dp" (scopes name it); stats may be shared by several Comms of a rank.
  Comm(std::unique_ptr<Backend> backend, std::string group, std::shared_ptr<CommStats> stats);

  int rank() const { return backend_->rank(); }
  int size() const { return backend_->size(); }
  const std::string& group() const { return group_; }
  Backend& backend() { return *backend_; }
  CommStats& stats() { return *stats_; }

  // Where the buffers of every call live: the backend's device (set at construction).
  // set_device names it explicitly and throws std::invalid_argument when the backend moves
  // buffers elsewhere (a CUDA Comm over the MPI backend).
  void set_device(Device d);
  Device device() const { return device_; }

  // Wire precision (--bf16): payloads of all-reduce, all-gather and reduce-scatter travel as
  // bf16 (sim/wire_precision.h). Ring hops round each sent chunk and each hop's partial sum; the
  // native and endpoint paths round this rank's contribution before and a reduction's result
  // after the backend's collective. Messages, bytes and packets count 2 bytes per element.
  // Broadcasts (configuration) and the cross-entropy statistics (sites "ce.*") stay fp32.
  // Off by default.
  void set_wire_bf16(bool on) { wire_bf16_ = on; }
  bool wire_bf16() const { return wire_bf16_; }

  // The network model for every later call (nullptr: exact). run_seed keys its randomness
  // unless the spec has its own seed=.
  void set_network(std::shared_ptr<const net::NetSpec> spec, uint64_t run_seed);
  const net::NetSpec* network() const { return net_.get(); }

  // ge ...,state=link: the chains of the links whose masks this rank draws (the receiver of a
  // ring hop or point-to-point message, the sender of an endpoint-mode contribution), keyed by
  // (model, group, src, dst). Every message of this Comm carries it (Message::link_states). A Comm
  // starts with a store of its own; the trainer gives a rank's Comms one shared store and saves
  // it in the rank's checkpoint. Not null.
  void set_link_states(std::shared_ptr<net::LinkStates> states);
  net::LinkStates& link_states() { return *link_states_; }

  // The iteration about to run; resets the per-step call index that, with the site, names a
  // message uniquely (the network model's randomness is keyed by it).
  void begin_step(int64_t iteration) { iteration_ = iteration; call_ = 0; }
  int64_t iteration() const { return iteration_; }

  void all_reduce(float* buf, size_t n, const std::string& site, ReduceOp op = ReduceOp::Sum);
  void all_gather(const float* in, float* out, size_t n_per_rank, const std::string& site);
  void reduce_scatter(const float* in, float* out, size_t n_per_rank, const std::string& site);
  void broadcast(float* buf, size_t n, int root, const std::string& site);

  // All-to-all (Ulysses context parallelism): block j of `in` (n_per_rank floats) goes to rank j,
  // block j of `out` comes from rank j; the own block is copied locally (bf16-rounded under
  // wire_bf16, as an all-gather's). Carried as p-1 sends and p-1 recvs, all tagged with one
  // next_tag(), so every message meets the network model as recv describes and is counted (one
  // call, p-1 messages on the sender; packets, losses and fills on the receiver). Waits for its
  // sends before returning. Not allowed in a recorded or replayed forward (std::logic_error).
  void all_to_all(const float* in, float* out, size_t n_per_rank, const std::string& site);

  // The ring algorithm even when the model is exact (tests compare it with the native one).
  void all_reduce_as_ring(float* buf, size_t n, const std::string& site, ReduceOp op = ReduceOp::Sum);

  // Point-to-point messages (pipeline parallelism: group "pp", sites "pp.fwd", "pp.bwd",
  // "pp.embed.grad"). send() copies the payload (bf16-rounded when the call travels as bf16)
  // into a buffer of the Comm, hands it to the backend's isend and returns: the copy is in
  // flight until wait_sends(), after which the buffers are reused (steady state allocates
  // nothing). recv() blocks until the message (src, tag) arrives and, when the site is in the
  // model's scope, passes it through the model: the RECEIVER draws the fates of a message of kind
  // P2P (call = tag, hop 0, src, dst = this rank); lost elements get the fill policy (zero and
  // local: 0, the receiver has no value of its own; stale: the last value that arrived at that
  // position of the site; rescale: delivered elements scaled by 1/(1-p), lost ones 0). Under
  // transport=reliable the data is exact and the plan's packets, retransmissions and time are
  // counted. The sender counts calls, messages and bytes; the receiver packets, losses, fills
  // and link time. recv returns the message's simulated link time (s). Neither is allowed in a
  // recorded or replayed forward (std::logic_error).
  void send(const float* buf, size_t n, int dst, int tag, const std::string& site);
  double recv(float* buf, size_t n, int src, int tag, const std::string& site);
  void wait_sends();  // also before the Comm goes: its buffers may still be on the wire
  // A tag for point-to-point messages that is the same on every rank of the group when all make
  // the same sequence of calls (SPMD): the per-step call index (mod 32767, MPI's smallest
  // guaranteed tag bound), advanced as a collective advances it. The sender and the receiver of
  // a message (context parallelism's ring steps) take it at the same point, so they agree on
  // the tag and hence on the message's packet fates (recv draws them with call = tag).
  int next_tag() { return static_cast<int>(call_++ % 32767); }
  // A two-rank sum outside the group's collectives: buf = buf + peer's buf. Each side sends its
  // values (a send, completed by the next wait_sends()) and adds what arrives, through the model
  // as recv (lost: nothing added, or the stale value; rescale scales what arrives). With nothing
  // lost both sides end bit-identical (under bf16 both terms and the sum are rounded).
  // Returns the link time as recv. The tied embedding's gradient between the pipeline's first
  // and last stage.
  double exchange_add(float* buf, size_t n, int peer, int tag, const std::string& site);

  // Activation recompute. record(tape): every later all-reduce, all-gather and reduce-scatter
  // also copies its result onto the tape (cleared first). replay(tape): every later one takes
  // its result from the tape, in order, instead of communicating: no counters, no call index,
  // no packet fates, no stale values change. A call whose site or size differs from the
  // recorded one, a call beyond the tape, or a broadcast throws std::logic_error. stop_tape():
  // back to communicating; after a replay, throws std::logic_error unless every entry was used.
  void record(CollectiveTape& tape);
  void replay(CollectiveTape& tape);
  void stop_tape();

 private:
  void all_reduce_impl(float* buf, size_t n, const std::string& site, ReduceOp op);
  void all_gather_impl(const float* in, float* out, size_t n_per_rank, const std::string& site);
  void reduce_scatter_impl(const float* in, float* out, size_t n_per_rank, const std::string& site);
  void block_collective(net::CollKind kind, const float* in, float* out, size_t m, const std::string& site);
  template <typename F>
  void guarded(const std::string& site, F&& body);
  // How a call at `site` is carried out.
  enum class Path { Native, Ring, Endpoint, Reliable };
  Path path_for(const std::string& site) const;
  net::Message message(const std::string& site, net::CollKind kind) const;
  // Counts an exact (native) collective: messages, bytes, link time (and packets unless the
  // caller counts them from a mask) of `hops` messages of `bytes_per_hop` each, elements of
  // `elem` bytes (0: the wire's, elem_bytes()).
  void count_native(SiteCounters& c, int64_t hops, size_t bytes_per_hop, bool packets = true,
                    size_t elem = 0) const;
  // Masks this rank's own contribution once (endpoint mode) and counts it.
  void mask_contribution(float* buf, size_t n, const std::string& site, net::CollKind kind,
                         SiteCounters& c);
  void count_fill(float* out, size_t n, const size_t* block);
  // Simulated time of `hops` received messages under reliable transport (data stays exact).
  void count_reliable(SiteCounters& c, const std::string& site, net::CollKind kind, int hops,
                      size_t bytes_per_hop);

  // send without counting a call (all_to_all counts one call for its p-1 messages).
  void post_send(const float* buf, size_t n, int dst, int tag, const std::string& site);
  // recv and exchange_add: the message into scratch_.recv, then through the model into buf
  // (reduce: added to buf).
  double p2p_recv(float* buf, size_t n, int src, int tag, const std::string& site, bool reduce);
  void no_tape(const char* what, const std::string& site) const;  // throws in tape mode

  void enter(const std::string& site);  // sets call_bf16_ for the call at `site`
  // Tape hooks around a call: true when the call was answered from the tape (replay).
  bool from_tape(float* out, size_t n, const std::string& site, const float* in = nullptr);
  void onto_tape(const float* out, size_t n, const std::string& site);
  HopContext hop_context(const std::string& site, net::CollKind kind, SiteCounters& c, bool lossy);
  size_t elem_bytes() const;                 // on the wire: 2 under wire_bf16, else 4
  void to_wire(float* buf, size_t n) const;  // rounds to bf16 under wire_bf16

  std::unique_ptr<Backend> backend_;
  std::string group_;
  std::shared_ptr<CommStats> stats_;
  std::shared_ptr<const net::NetSpec> net_;
  uint64_t seed_ = 0;
  std::shared_ptr<net::LinkStates> link_states_ = std::make_shared<net::LinkStates>();
  Device device_ = Device::CPU;
  bool wire_bf16_ = false;
  bool call_bf16_ = false;  // the current call travels as bf16
  StaleStore stale_;
  CommScratch scratch_;
  std::vector<DeviceBuffer> send_bufs_;  // payloads of send(): [0, sends_) in flight
  size_t sends_ = 0;
  int64_t iteration_ = 0;
  int64_t call_ = 0;
  enum class TapeMode { Off, Record, Replay } tape_mode_ = TapeMode::Off;
  CollectiveTape* tape_ = nullptr;
};

}  // namespace lossytp
