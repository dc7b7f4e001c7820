// Context parallelism (--context-parallel-size C, --cp-comm-type): the attention core of a block
// when each of the C ranks of a CP group holds part of every sequence. Megatron's load balance:
// the sequence of T tokens is cut into 2C chunks of Tc = T / (2C) tokens; CP rank i holds chunks
// i and 2C-1-i, in that order (local rows [0, Tc) at global positions i Tc + r, rows [Tc, 2 Tc) at
// (2C-1-i) Tc + r - Tc), so every rank has the same share of the causal work.
//
// The three ways to communicate it, as Megatron-LM / Transformer Engine (every message through the
// CP group's Comm, group "cp", so every network model, fill and scope applies; sites are
// "<prefix>.<name>", e.g. "layer3.attn.kv.fwd", selected by scope=cp or scope=cp.kv.fwd):
//  - p2p (ring attention): K/V blocks passed around the CP ring, C steps; each step's partial
//    output merged with its log-sum-exp. Backward: K/V passed around again ("kv.bwd") with the
//    dK/dV accumulators ("dkv.bwd"), which end on their owner. Sites kv.fwd, kv.bwd, dkv.bwd.
//  - all_gather: K/V all-gathered ("kv.fwd"), then local attention; backward: K/V all-gathered
//    again ("kv.bwd"), dK/dV reduce-scattered to their owners ("dkv.bwd").
//  - a2a (Ulysses): all-to-all of q, k, v from sequence-sharded to head-sharded ("a2a.qkv.fwd"),
//    attention over the whole sequence for NH/C heads, all-to-all of the output back
//    ("a2a.out.fwd", with the lse); backward: q, k, v again ("a2a.qkv.bwd": nothing is kept
//    between forward and backward), dout with its lse and rowsum(dout * o) ("a2a.dout.bwd"), and
//    dq, dk, dv back ("a2a.dqkv.bwd"). Needs the local query heads and K/V groups divisible by C.
// Point-to-point messages are tagged with Comm::next_tag() (one per ring step and stream), so
// sender and receiver agree on the tag and on the message's packet fates.
// The blocks are kernels/cpu attention_block_* (causal by global positions).
#pragma once
#include <string>

#include "kernels/device.h"
#include "models/workspace.h"
#include "sim/comm.h"

namespace lossytp {

// Global position of local row r (0 <= r < 2 Tc) of CP rank `rank` of `size`, chunks of Tc tokens.
inline int cp_position(int r, int Tc, int rank, int size) {
  return r < Tc ? rank * Tc + r : (2 * size - 1 - rank) * Tc + (r - Tc);
}

// The names of --cp-comm-type, and a check that throws std::invalid_argument naming them.
const char* const kCpCommTypes[] = {"p2p", "all_gather", "a2a"};
void check_cp_comm_type(const std::string& type);

class ContextParallelAttention {
 public:
  // NH query heads and NKV K/V heads of this TP rank, head dim HD.
  ContextParallelAttention(std::string comm_type, int NH, int NKV, int HD, Device dev);
  const std::string& comm_type() const { return type_; }

  // This CP rank's rows of every sequence: q [B, NH, Tl, HD], k, v [B, NKV, Tl, HD] with
  // Tl = 2 Tc local rows in the order above (RoPE already applied). Writes o [B, NH, Tl, HD]
  // and lse [B, NH, Tl] (the full causal attention's log-sum-exp of each local query).
  // site: "<prefix>" (e.g. "layer3.attn"); message sites are "<prefix>.kv.fwd", ...
  void forward(float* o, float* lse, const float* q, const float* k, const float* v, int B, int Tl,
               Comm& cp, const std::string& site, Workspace& ws);
  // dout [B, NH, Tl, HD]; o and lse from forward; writes (overwrites) dq, dk, dv of this rank's rows.
  void backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                const float* v, const float* o, const float* lse, int B, int Tl, Comm& cp,
                const std::string& site, Workspace& ws);

 private:
  // Throws std::invalid_argument for an odd local length, or a2a heads not divisible by C.
  void check_shape(int Tl, int C) const;
  // p2p / all_gather, on chunk-major buffers (models/context_parallel.cpp): this rank's query
  // chunks against CP rank src's [K;V] block; forward merges into (oc, lsec), backward
  // accumulates into dqc and src's [dK;dV] block.
  void pack_kv(float* kv, const float* k, const float* v, int B, int Tc) const;
  void attend_forward(float* oc, float* lsec, const float* qc, const float* kv, int src, int B,
                      int Tc, Comm& cp, float* o2, float* l2) const;
  void attend_backward(float* dqc, float* dkv, const float* qc, const float* kv, const float* doc,
                       const float* lsec, const float* deltac, int src, int B, int Tc,
                       Comm& cp) const;
  // a2a (Ulysses).
  void gather_heads(float* qf, float* kf, float* vf, const float* q, const float* k, const float* v,
                    int B, int Tl, Comm& cp, const std::string& a2a_site, Workspace& ws) const;
  void forward_a2a(float* o, float* lse, const float* q, const float* k, const float* v, int B,
                   int Tl, Comm& cp, const std::string& site, Workspace& ws);
  void backward_a2a(float* dq, float* dk, float* dv, const float* dout, const float* q,
                    const float* k, const float* v, const float* o, const float* lse, int B,
                    int Tl, Comm& cp, const std::string& site, Workspace& ws);

  std::string type_;
  int NH_, NKV_, HD_;
  Device dev_;
};

}  // namespace lossytp
