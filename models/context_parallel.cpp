// Context-parallel attention (models/context_parallel.h): p2p ring attention, all-gather and
// Ulysses all-to-all over the CP group, built on the blockwise kernels attention_block_* (causal
// by global positions, merged by log-sum-exp; kernels/cpu/attention_blocks.cpp).
//
// Layouts. The caller's tensors hold a rank's Tl = 2 Tc rows per (b, head): chunk 0 then chunk 1.
// The kernels want one chunk contiguous per (b, head), so p2p and all_gather work chunk-major,
// x[c][B, heads, Tc, HD], and a [K;V] block (what travels) is [K chunk 0, K chunk 1, V chunk 0,
// V chunk 1], 2 B NKV Tl HD floats. a2a reassembles the whole sequence in global order per head
// shard, so its attention is one causal block of T = C Tl rows.
//
// Determinism: p2p and all_gather visit the K/V of ranks rank, rank-1, ... in the same order
// and merge in the same order, so with an exact network they give bit-identical o and lse
// (their dK/dV sums differ in order: the ring adds along the ring, reduce-scatter by rank).
#include "models/context_parallel.h"

#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include "kernels/ops.h"

namespace lossytp {

void check_cp_comm_type(const std::string& type) {
  for (const char* t : kCpCommTypes)
    if (type == t) return;
  throw std::invalid_argument("--cp-comm-type '" + type + "' is unknown: use p2p, all_gather or a2a");
}

namespace {

// x [N, 2 Tc D] (a rank's rows, chunk 0 then chunk 1, per (b, head)) -> chunk-major [2][N, Tc D].
void to_chunks(Device d, float* dst, const float* src, int N, int Tc, int D) {
  const int seg = Tc * D;
  for (int c = 0; c < 2; ++c)
    ops::copy_cols(d, dst + static_cast<size_t>(c) * N * seg, seg, src + c * seg, 2 * seg, N, seg);
}
void from_chunks(Device d, float* dst, const float* src, int N, int Tc, int D) {
  const int seg = Tc * D;
  for (int c = 0; c < 2; ++c)
    ops::copy_cols(d, dst + c * seg, 2 * seg, src + static_cast<size_t>(c) * N * seg, seg, N, seg);
}

// a2a, sequence side: x [B, H, L] (L floats per head) heads [h0, h0 + hs) <-> block [B, hs, L].
void heads_to_block(Device d, float* blk, const float* x, int B, int H, int h0, int hs, int L) {
  ops::copy_cols(d, blk, hs * L, x + static_cast<size_t>(h0) * L, H * L, B, hs * L);
}
void block_to_heads(Device d, float* x, const float* blk, int B, int H, int h0, int hs, int L) {
  ops::copy_cols(d, x + static_cast<size_t>(h0) * L, H * L, blk, hs * L, B, hs * L);
}

// a2a, head side: full [N, T, D] in global order <-> rank r's rows [N, 2 Tc, D] (its two chunks).
void rank_rows_to_full(Device d, float* full, const float* rows, int N, int Tc, int D, int r, int C) {
  const int T = 2 * C * Tc, seg = Tc * D;
  for (int c = 0; c < 2; ++c)
    ops::copy_cols(d, full + static_cast<size_t>(cp_position(c * Tc, Tc, r, C)) * D, T * D,
                   rows + c * seg, 2 * seg, N, seg);
}
void full_to_rank_rows(Device d, float* rows, const float* full, int N, int Tc, int D, int r, int C) {
  const int T = 2 * C * Tc, seg = Tc * D;
  for (int c = 0; c < 2; ++c)
    ops::copy_cols(d, rows + c * seg, 2 * seg,
                   full + static_cast<size_t>(cp_position(c * Tc, Tc, r, C)) * D, T * D, N, seg);
}

}  // namespace

ContextParallelAttention::ContextParallelAttention(std::string comm_type, int NH, int NKV, int HD,
                                                   Device dev)
    : type_(std::move(comm_type)), NH_(NH), NKV_(NKV), HD_(HD), dev_(dev) {
  check_cp_comm_type(type_);
  if (NKV <= 0 || NH % NKV != 0)
    throw std::invalid_argument("context parallel attention: query heads (" + std::to_string(NH) +
                                ") must be a multiple of K/V heads (" + std::to_string(NKV) + ")");
}

void ContextParallelAttention::check_shape(int Tl, int C) const {
  if (Tl <= 0 || Tl % 2 != 0)
    throw std::invalid_argument("context parallel attention: the local sequence (" + std::to_string(Tl) +
                                " tokens) must be two equal chunks: --seq-length divisible by 2 x "
                                "--context-parallel-size");
  if (type_ == "a2a" && C > 1 && (NH_ % C != 0 || NKV_ % C != 0))
    throw std::invalid_argument("--cp-comm-type a2a needs the attention heads (" + std::to_string(NH_) +
                                ") and K/V groups (" + std::to_string(NKV_) +
                                ") per TP rank (--num-attention-heads, --num-query-groups over "
                                "--tensor-model-parallel-size) divisible by --context-parallel-size " +
                                std::to_string(C));
}

// Running (o, lse) of this rank's two query chunks += attention against CP rank src's two K/V
// chunks (kv: a [K;V] block). Pairs whose keys all lie after all queries are skipped; equal
// chunks make every other pair either fully visible or diagonal.
void ContextParallelAttention::attend_forward(float* oc, float* lsec, const float* qc,
                                              const float* kv, int src, int B, int Tc, Comm& cp,
                                              float* o2, float* l2) const {
  const int C = cp.size(), r = cp.rank();
  const size_t qn = static_cast<size_t>(B) * NH_ * Tc * HD_, ln = static_cast<size_t>(B) * NH_ * Tc;
  const size_t kn = static_cast<size_t>(B) * NKV_ * Tc * HD_;
  for (int a = 0; a < 2; ++a) {
    const int qpos = cp_position(a * Tc, Tc, r, C);
    for (int b = 0; b < 2; ++b) {
      const int kpos = cp_position(b * Tc, Tc, src, C);
      if (kpos > qpos) continue;
      ops::attention_block_forward(dev_, o2, l2, qc + a * qn, kv + b * kn, kv + (2 + b) * kn, B, NH_,
                                   NKV_, Tc, Tc, HD_, qpos, kpos);
      ops::attention_merge(dev_, oc + a * qn, lsec + a * ln, o2, l2, ln, HD_);
    }
  }
}

// dq (this rank's chunks) and dkv (src's [dK;dV] block) += the gradients of the pairs above,
// given the full lse and delta of this rank's queries.
void ContextParallelAttention::attend_backward(float* dqc, float* dkv, const float* qc,
                                               const float* kv, const float* doc,
                                               const float* lsec, const float* deltac, int src,
                                               int B, int Tc, Comm& cp) const {
  const int C = cp.size(), r = cp.rank();
  const size_t qn = static_cast<size_t>(B) * NH_ * Tc * HD_, ln = static_cast<size_t>(B) * NH_ * Tc;
  const size_t kn = static_cast<size_t>(B) * NKV_ * Tc * HD_;
  for (int a = 0; a < 2; ++a) {
    const int qpos = cp_position(a * Tc, Tc, r, C);
    for (int b = 0; b < 2; ++b) {
      const int kpos = cp_position(b * Tc, Tc, src, C);
      if (kpos > qpos) continue;
      ops::attention_block_backward(dev_, dqc + a * qn, dkv + b * kn, dkv + (2 + b) * kn, qc + a * qn,
                                    kv + b * kn, kv + (2 + b) * kn, doc + a * qn, lsec + a * ln,
                                    deltac + a * ln, B, NH_, NKV_, Tc, Tc, HD_, qpos, kpos);
    }
  }
}

// [K;V] block of this rank, chunk-major.
void ContextParallelAttention::pack_kv(float* kv, const float* k, const float* v, int B, int Tc) const {
  const size_t kvh = static_cast<size_t>(B) * NKV_ * 2 * Tc * HD_;  // one of K, V
  to_chunks(dev_, kv, k, B * NKV_, Tc, HD_);
  to_chunks(dev_, kv + kvh, v, B * NKV_, Tc, HD_);
}

void ContextParallelAttention::forward(float* o, float* lse, const float* q, const float* k,
                                       const float* v, int B, int Tl, Comm& cp,
                                       const std::string& site, Workspace& ws) {
  const int C = cp.size(), r = cp.rank(), Tc = Tl / 2;
  check_shape(Tl, C);
  if (C == 1) {  // the whole sequence in order: one causal block
    ops::attention_block_forward(dev_, o, lse, q, k, v, B, NH_, NKV_, Tl, Tl, HD_, 0, 0);
    return;
  }
  if (type_ == "a2a") return forward_a2a(o, lse, q, k, v, B, Tl, cp, site, ws);

  const size_t qsz = static_cast<size_t>(B) * NH_ * Tl * HD_, lsz = static_cast<size_t>(B) * NH_ * Tl;
  const size_t kvn = 2 * static_cast<size_t>(B) * NKV_ * Tl * HD_;
  float* qc = ws.get("cp.q", qsz);
  float* oc = ws.get("cp.o", qsz);
  float* lsec = ws.get("cp.lse", lsz);
  float* o2 = ws.get("cp.o2", qsz / 2);
  float* l2 = ws.get("cp.lse2", lsz / 2);
  to_chunks(dev_, qc, q, B * NH_, Tc, HD_);
  ops::fill(dev_, oc, 0.0f, qsz);
  ops::fill(dev_, lsec, -std::numeric_limits<float>::infinity(), lsz);

  if (type_ == "p2p") {
    // Step s attends to the K/V of rank r - s while passing it on to r + 1 (the send copies it,
    // so the next block can land in the other buffer while this one is still in use).
    float* cur = ws.get("cp.kv0", kvn);
    float* nxt = ws.get("cp.kv1", kvn);
    pack_kv(cur, k, v, B, Tc);
    const int next = (r + 1) % C, prev = (r + C - 1) % C;
    for (int s = 0; s < C; ++s) {
      const bool more = s + 1 < C;
      const int tag = more ? cp.next_tag() : 0;
      if (more) cp.send(cur, kvn, next, tag, site + ".kv.fwd");
      attend_forward(oc, lsec, qc, cur, (r + C - s) % C, B, Tc, cp, o2, l2);
      if (more) {
        cp.recv(nxt, kvn, prev, tag, site + ".kv.fwd");
        cp.wait_sends();
        std::swap(cur, nxt);
      }
    }
  } else {  // all_gather: every rank's [K;V] at once, then the same visits as the ring
    float* mine = ws.get("cp.kv0", kvn);
    float* all = ws.get("cp.kv_all", kvn * C);
    pack_kv(mine, k, v, B, Tc);
    cp.all_gather(mine, all, kvn, site + ".kv.fwd");
    for (int s = 0; s < C; ++s) {
      const int src = (r + C - s) % C;
      attend_forward(oc, lsec, qc, all + src * kvn, src, B, Tc, cp, o2, l2);
    }
  }
  from_chunks(dev_, o, oc, B * NH_, Tc, HD_);
  from_chunks(dev_, lse, lsec, B * NH_, Tc, 1);
  cp.wait_sends();
}

void ContextParallelAttention::backward(float* dq, float* dk, float* dv, const float* dout,
                                        const float* q, const float* k, const float* v,
                                        const float* o, const float* lse, int B, int Tl, Comm& cp,
                                        const std::string& site, Workspace& ws) {
  const int C = cp.size(), r = cp.rank(), Tc = Tl / 2;
  check_shape(Tl, C);
  const size_t qsz = static_cast<size_t>(B) * NH_ * Tl * HD_, lsz = static_cast<size_t>(B) * NH_ * Tl;
  const size_t kvn = 2 * static_cast<size_t>(B) * NKV_ * Tl * HD_;
  if (C == 1) {
    float* delta = ws.get("cp.delta", lsz);
    ops::attention_delta(dev_, delta, dout, o, lsz, HD_);
    ops::fill(dev_, dq, 0.0f, qsz);
    ops::fill(dev_, dk, 0.0f, kvn / 2);
    ops::fill(dev_, dv, 0.0f, kvn / 2);
    ops::attention_block_backward(dev_, dq, dk, dv, q, k, v, dout, lse, delta, B, NH_, NKV_, Tl, Tl,
                                  HD_, 0, 0);
    return;
  }
  if (type_ == "a2a") return backward_a2a(dq, dk, dv, dout, q, k, v, o, lse, B, Tl, cp, site, ws);

  // Chunk-major copies of this rank's queries, output gradient, lse and delta (rows are
  // independent, so delta is computed on the chunk-major copies directly).
  float* qc = ws.get("cp.q", qsz);
  float* doc = ws.get("cp.dout", qsz);
  float* dqc = ws.get("cp.dq", qsz);
  float* lsec = ws.get("cp.lse", lsz);
  float* deltac = ws.get("cp.delta", lsz);
  float* oc = ws.get("cp.o", qsz);
  to_chunks(dev_, qc, q, B * NH_, Tc, HD_);
  to_chunks(dev_, doc, dout, B * NH_, Tc, HD_);
  to_chunks(dev_, oc, o, B * NH_, Tc, HD_);
  to_chunks(dev_, lsec, lse, B * NH_, Tc, 1);
  ops::attention_delta(dev_, deltac, doc, oc, lsz, HD_);
  ops::fill(dev_, dqc, 0.0f, qsz);

  float* dkv_own = nullptr;  // this rank's complete [dK;dV] block at the end
  if (type_ == "p2p") {
    // Transformer Engine's ring: at step s rank r holds the K/V of rank r - s and the dK/dV
    // accumulated for it so far by ranks r - s .. r - 1; it adds its part and passes both on.
    // After C steps one more hop of dK/dV (the last step's send) brings each owner its total.
    float* cur = ws.get("cp.kv0", kvn);
    float* nxt = ws.get("cp.kv1", kvn);
    float* dcur = ws.get("cp.dkv0", kvn);
    float* dnxt = ws.get("cp.dkv1", kvn);
    pack_kv(cur, k, v, B, Tc);
    ops::fill(dev_, dcur, 0.0f, kvn);
    const int next = (r + 1) % C, prev = (r + C - 1) % C;
    for (int s = 0; s < C; ++s) {
      const bool more = s + 1 < C;  // K/V still has ranks to visit
      const int kv_tag = more ? cp.next_tag() : 0;
      if (more) cp.send(cur, kvn, next, kv_tag, site + ".kv.bwd");
      attend_backward(dqc, dcur, qc, cur, doc, lsec, deltac, (r + C - s) % C, B, Tc, cp);
      const int dkv_tag = cp.next_tag();
      cp.send(dcur, kvn, next, dkv_tag, site + ".dkv.bwd");
      if (more) cp.recv(nxt, kvn, prev, kv_tag, site + ".kv.bwd");
      cp.recv(dnxt, kvn, prev, dkv_tag, site + ".dkv.bwd");
      cp.wait_sends();
      std::swap(cur, nxt);
      std::swap(dcur, dnxt);
    }
    dkv_own = dcur;
  } else {  // all_gather: K/V gathered again, every block's dK/dV reduce-scattered to its owner
    float* mine = ws.get("cp.kv0", kvn);
    float* all = ws.get("cp.kv_all", kvn * C);
    float* dall = ws.get("cp.dkv_all", kvn * C);
    dkv_own = ws.get("cp.dkv0", kvn);
    pack_kv(mine, k, v, B, Tc);
    cp.all_gather(mine, all, kvn, site + ".kv.bwd");
    ops::fill(dev_, dall, 0.0f, kvn * C);
    for (int s = 0; s < C; ++s) {
      const int src = (r + C - s) % C;
      attend_backward(dqc, dall + src * kvn, qc, all + src * kvn, doc, lsec, deltac, src, B, Tc, cp);
    }
    cp.reduce_scatter(dall, dkv_own, kvn, site + ".dkv.bwd");
  }
  from_chunks(dev_, dq, dqc, B * NH_, Tc, HD_);
  from_chunks(dev_, dk, dkv_own, B * NKV_, Tc, HD_);
  from_chunks(dev_, dv, dkv_own + kvn / 2, B * NKV_, Tc, HD_);
  cp.wait_sends();
}

// ---- a2a (Ulysses): rank j attends for query heads [j hs, (j+1) hs) and K/V heads
// [j ks, (j+1) ks) over the whole sequence. The block for rank j of an all-to-all is
// [q heads; k heads; v heads] (or outputs) of the sender's rows.

// q, k, v of this rank's rows -> whole-sequence q [B, hs, T, HD], k, v [B, ks, T, HD] of this
// rank's head shard, through one all-to-all at `a2a_site`.
void ContextParallelAttention::gather_heads(float* qf, float* kf, float* vf, const float* q,
                                            const float* k, const float* v, int B, int Tl, Comm& cp,
                                            const std::string& a2a_site, Workspace& ws) const {
  const int C = cp.size(), Tc = Tl / 2, hs = NH_ / C, ks = NKV_ / C, L = Tl * HD_;
  const size_t qb = static_cast<size_t>(B) * hs * L, kb = static_cast<size_t>(B) * ks * L;
  const size_t m = qb + 2 * kb;
  float* send = ws.get("cp.a2a.send", m * C);
  float* recv = ws.get("cp.a2a.recv", m * C);
  for (int j = 0; j < C; ++j) {
    float* blk = send + j * m;
    heads_to_block(dev_, blk, q, B, NH_, j * hs, hs, L);
    heads_to_block(dev_, blk + qb, k, B, NKV_, j * ks, ks, L);
    heads_to_block(dev_, blk + qb + kb, v, B, NKV_, j * ks, ks, L);
  }
  cp.all_to_all(send, recv, m, a2a_site);
  for (int i = 0; i < C; ++i) {
    const float* blk = recv + i * m;
    rank_rows_to_full(dev_, qf, blk, B * hs, Tc, HD_, i, C);
    rank_rows_to_full(dev_, kf, blk + qb, B * ks, Tc, HD_, i, C);
    rank_rows_to_full(dev_, vf, blk + qb + kb, B * ks, Tc, HD_, i, C);
  }
}

void ContextParallelAttention::forward_a2a(float* o, float* lse, const float* q, const float* k,
                                           const float* v, int B, int Tl, Comm& cp,
                                           const std::string& site, Workspace& ws) {
  const int C = cp.size(), Tc = Tl / 2, T = C * Tl, hs = NH_ / C, ks = NKV_ / C;
  const size_t qf_n = static_cast<size_t>(B) * hs * T * HD_, kf_n = static_cast<size_t>(B) * ks * T * HD_;
  float* qf = ws.get("cp.a2a.q", qf_n);
  float* kf = ws.get("cp.a2a.k", kf_n);
  float* vf = ws.get("cp.a2a.v", kf_n);
  float* of = ws.get("cp.a2a.o", qf_n);
  float* lf = ws.get("cp.a2a.lse", static_cast<size_t>(B) * hs * T);
  gather_heads(qf, kf, vf, q, k, v, B, Tl, cp, site + ".a2a.qkv.fwd", ws);
  ops::attention_block_forward(dev_, of, lf, qf, kf, vf, B, hs, ks, T, T, HD_, 0, 0);

  // Back to sequence shards: the block for rank i is [o; lse] of its rows (the lse travels with
  // the output: the caller keeps it for the backward, which sends it back with dout).
  const size_t ob = static_cast<size_t>(B) * hs * Tl * HD_, lb = static_cast<size_t>(B) * hs * Tl;
  const size_t m = ob + lb;
  float* send = ws.get("cp.a2a.send", m * C);
  float* recv = ws.get("cp.a2a.recv", m * C);
  for (int i = 0; i < C; ++i) {
    full_to_rank_rows(dev_, send + i * m, of, B * hs, Tc, HD_, i, C);
    full_to_rank_rows(dev_, send + i * m + ob, lf, B * hs, Tc, 1, i, C);
  }
  cp.all_to_all(send, recv, m, site + ".a2a.out.fwd");
  for (int j = 0; j < C; ++j) {
    block_to_heads(dev_, o, recv + j * m, B, NH_, j * hs, hs, Tl * HD_);
    block_to_heads(dev_, lse, recv + j * m + ob, B, NH_, j * hs, hs, Tl);
  }
  cp.wait_sends();
}

// Backward: the forward kept nothing (one object serves many micro-batches and recompute), so
// the head-sharded q, k, v travel again ("a2a.qkv.bwd", as the ring's K/V does in "kv.bwd");
// dout goes with its lse and delta = rowsum(dout * o), both computed where o is (no recompute
// of the forward); dq, dk, dv come back in one all-to-all.
void ContextParallelAttention::backward_a2a(float* dq, float* dk, float* dv, const float* dout,
                                            const float* q, const float* k, const float* v,
                                            const float* o, const float* lse, int B, int Tl,
                                            Comm& cp, const std::string& site, Workspace& ws) {
  const int C = cp.size(), Tc = Tl / 2, T = C * Tl, hs = NH_ / C, ks = NKV_ / C;
  const size_t qf_n = static_cast<size_t>(B) * hs * T * HD_, kf_n = static_cast<size_t>(B) * ks * T * HD_;
  const size_t lf_n = static_cast<size_t>(B) * hs * T;
  float* qf = ws.get("cp.a2a.q", qf_n);
  float* kf = ws.get("cp.a2a.k", kf_n);
  float* vf = ws.get("cp.a2a.v", kf_n);
  float* dof = ws.get("cp.a2a.o", qf_n);  // dout of the shard (o is not needed here)
  float* lf = ws.get("cp.a2a.lse", lf_n);
  float* deltaf = ws.get("cp.a2a.delta", lf_n);
  float* dqf = ws.get("cp.a2a.dq", qf_n);
  float* dkf = ws.get("cp.a2a.dk", kf_n);
  float* dvf = ws.get("cp.a2a.dv", kf_n);
  gather_heads(qf, kf, vf, q, k, v, B, Tl, cp, site + ".a2a.qkv.bwd", ws);

  const size_t lsz = static_cast<size_t>(B) * NH_ * Tl;
  float* delta = ws.get("cp.delta", lsz);
  ops::attention_delta(dev_, delta, dout, o, lsz, HD_);
  const size_t ob = static_cast<size_t>(B) * hs * Tl * HD_, lb = static_cast<size_t>(B) * hs * Tl;
  {
    const size_t m = ob + 2 * lb;  // [dout; lse; delta] of the destination's heads
    float* send = ws.get("cp.a2a.send", m * C);
    float* recv = ws.get("cp.a2a.recv", m * C);
    for (int j = 0; j < C; ++j) {
      float* blk = send + j * m;
      heads_to_block(dev_, blk, dout, B, NH_, j * hs, hs, Tl * HD_);
      heads_to_block(dev_, blk + ob, lse, B, NH_, j * hs, hs, Tl);
      heads_to_block(dev_, blk + ob + lb, delta, B, NH_, j * hs, hs, Tl);
    }
    cp.all_to_all(send, recv, m, site + ".a2a.dout.bwd");
    for (int i = 0; i < C; ++i) {
      const float* blk = recv + i * m;
      rank_rows_to_full(dev_, dof, blk, B * hs, Tc, HD_, i, C);
      rank_rows_to_full(dev_, lf, blk + ob, B * hs, Tc, 1, i, C);
      rank_rows_to_full(dev_, deltaf, blk + ob + lb, B * hs, Tc, 1, i, C);
    }
  }
  ops::fill(dev_, dqf, 0.0f, qf_n);
  ops::fill(dev_, dkf, 0.0f, kf_n);
  ops::fill(dev_, dvf, 0.0f, kf_n);
  ops::attention_block_backward(dev_, dqf, dkf, dvf, qf, kf, vf, dof, lf, deltaf, B, hs, ks, T, T,
                                HD_, 0, 0);

  // dq, dk, dv of rank i's rows back to rank i: the reverse of gather_heads.
  const size_t kb = static_cast<size_t>(B) * ks * Tl * HD_;
  const size_t m = ob + 2 * kb;
  float* send = ws.get("cp.a2a.send", m * C);
  float* recv = ws.get("cp.a2a.recv", m * C);
  for (int i = 0; i < C; ++i) {
    float* blk = send + i * m;
    full_to_rank_rows(dev_, blk, dqf, B * hs, Tc, HD_, i, C);
    full_to_rank_rows(dev_, blk + ob, dkf, B * ks, Tc, HD_, i, C);
    full_to_rank_rows(dev_, blk + ob + kb, dvf, B * ks, Tc, HD_, i, C);
  }
  cp.all_to_all(send, recv, m, site + ".a2a.dqkv.bwd");
  const int L = Tl * HD_;
  for (int j = 0; j < C; ++j) {
    const float* blk = recv + j * m;
    block_to_heads(dev_, dq, blk, B, NH_, j * hs, hs, L);
    block_to_heads(dev_, dk, blk + ob, B, NKV_, j * ks, ks, L);
    block_to_heads(dev_, dv, blk + ob + kb, B, NKV_, j * ks, ks, L);
  }
  cp.wait_sends();
}

}  // namespace lossytp
