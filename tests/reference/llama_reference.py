#!/usr/bin/python3
"""An independent float64 NumPy forward and backward of the models lossytp trains (Llama and
GPT-2 shapes), checked against one step of lossytp (tests/reference/dump_step.cpp).

Usage: llama_reference.py DIR [--fd-coords K] [--no-fd] [--quiet]
  DIR holds params.safetensors, grads.safetensors and meta.json from lossytp_dump_step.

Written from the Hugging Face (LlamaForCausalLM, GPT2LMHeadModel) and Megatron-LM definitions, not
from lossytp's code:
  - pre-norm block: h += proj(attn(norm1(h))); h += fc2(act(fc1(norm2(h)))); final norm; head;
  - LayerNorm (weight, bias) or RMSNorm y = x / sqrt(mean(x^2) + eps) * w, eps = norm_epsilon;
  - fused QKV [(NH + 2 NKV) HD, C], rows grouped by query group (Megatron): for group g its
    NH/NKV query heads, then k_g, then v_g; query head h attends with K/V of group h // (NH/NKV)
    (HF repeat_kv);
  - RoPE, rotate-half (HF apply_rotary_pos_emb, Megatron rotary_interleaved=False) on the first
    rot = int(HD * rotary_percent) channels of every q and k head; inv_freq = base^(-2i/rot);
  - causal softmax attention, scale 1/sqrt(HD);
  - MLP: tanh-GELU (HF gelu_new) on fc1 [F, C], or SwiGLU: fc1 [2F, C] = [gate; up],
    silu(gate) * up (HF down(silu(gate(x)) * up(x)));
  - linear layers y = x W^T + b (biases when add_bias_linear);
  - logits over the first V rows of output_layer.weight (untied) or embed.weight (tied); the
    padded rows (>= V) take no part in the softmax; loss = mean cross-entropy.
The backward is written out by hand, layer by layer, and checked against central finite
differences (a few coordinates of every parameter and one random direction through all of
them) before it is compared with lossytp:
  loss:      |lossytp - ref| <= 1e-5 |ref|
  gradients: max |lossytp - ref| <= 1e-4 max |ref| + 1e-7, per tensor (lossytp is float32: its
             gradients carry ~1e-6 relative rounding, and accumulations over B*T tokens grow it)
  padding:   the gradient rows >= V of embed.weight and output_layer.weight are exactly zero.
Exit code 0 when every check passes, 1 otherwise. tests/reference/run.sh runs it over several
configurations (ctest reference_model); hf_crosscheck.py checks this reference against
transformers' own models.
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np

LOSS_RTOL = 1e-5
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-7
FD_STEP = 1e-5
FD_RTOL, FD_ATOL = 1e-6, 1e-10   # of the tensor's max |grad|: float64 central differences


# --------------------------------------------------------------------------------------------
# safetensors (u64 LE header length, JSON header, raw little-endian buffer)

DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I32": "<i4", "I64": "<i8"}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    header.pop("__metadata__", None)
    buf = memoryview(data)[8 + n:]
    out, spans = {}, []
    for name, h in header.items():
        b, e = h["data_offsets"]
        dt = np.dtype(DTYPES[h["dtype"]])
        numel = int(np.prod(h["shape"], dtype=np.int64))
        if e - b != numel * dt.itemsize:
            raise ValueError(f"{path}: {name}: data_offsets {b}..{e} do not hold shape {h['shape']}")
        out[name] = np.frombuffer(buf[b:e], dtype=dt).reshape(h["shape"]).astype(np.float64)
        spans.append((b, e))
    spans.sort()
    pos = 0
    for b, e in spans:  # the format requires the tensors to tile the buffer
        if b != pos:
            raise ValueError(f"{path}: a gap or overlap at byte {pos} of the buffer")
        pos = e
    if pos != len(buf):
        raise ValueError(f"{path}: {len(buf) - pos} trailing bytes")
    return out


# --------------------------------------------------------------------------------------------
# the configuration

class Cfg:
    def __init__(self, c):
        self.V = c["vocab_size"]
        self.Vp = c["padded_vocab_size"]
        self.S = c["seq_length"]
        self.L = c["num_layers"]
        self.C = c["hidden_size"]
        self.NH = c["num_attention_heads"]
        self.NKV = c["num_query_groups"] if c["group_query_attention"] else self.NH
        self.HD = self.C // self.NH
        self.F = c["ffn_hidden_size"]
        self.rms = c["normalization"] == "RMSNorm"
        if not self.rms and c["normalization"] != "LayerNorm":
            raise ValueError(f"unknown normalization {c['normalization']}")
        self.eps = float(c["norm_epsilon"])
        self.rope = c["position_embedding_type"] == "rope"
        if not self.rope and c["position_embedding_type"] != "learned_absolute":
            raise ValueError(f"unknown position_embedding_type {c['position_embedding_type']}")
        self.base = float(c["rotary_base"])
        self.rot = int(self.HD * float(c["rotary_percent"]))
        self.swiglu = bool(c["swiglu"])
        self.bias = bool(c["add_bias_linear"])
        self.untie = bool(c["untie_embeddings_and_output_weights"])
        div = c["make_vocab_size_divisible_by"]
        want_vp = -(-self.V // div) * div
        if self.Vp != want_vp:
            raise ValueError(f"padded_vocab_size {self.Vp} != ceil(V / {div}) * {div} = {want_vp}")
        if self.NH % self.NKV:
            raise ValueError("num_attention_heads is not a multiple of num_query_groups")
        if self.rope and self.rot % 2:
            raise ValueError(f"rotary dim {self.rot} is odd")

    def shapes(self):
        """The parameters lossytp must have: name -> full shape."""
        C, HD, F = self.C, self.HD, self.F
        s = {"embed.weight": (self.Vp, C)}
        if not self.rope:
            s["pos.weight"] = (self.S, C)
        for l in range(self.L):
            p = f"layer{l}."
            for n in ("ln1", "ln2"):
                s[p + n + ".weight"] = (C,)
                if not self.rms:
                    s[p + n + ".bias"] = (C,)
            s[p + "attn.qkv.weight"] = ((self.NH + 2 * self.NKV) * HD, C)
            s[p + "attn.proj.weight"] = (C, self.NH * HD)
            s[p + "mlp.fc1.weight"] = ((2 if self.swiglu else 1) * F, C)
            s[p + "mlp.fc2.weight"] = (C, F)
            if self.bias:
                s[p + "attn.qkv.bias"] = ((self.NH + 2 * self.NKV) * HD,)
                s[p + "attn.proj.bias"] = (C,)
                s[p + "mlp.fc1.bias"] = ((2 if self.swiglu else 1) * F,)
                s[p + "mlp.fc2.bias"] = (C,)
        s["lnf.weight"] = (C,)
        if not self.rms:
            s["lnf.bias"] = (C,)
        if self.untie:
            s["output_layer.weight"] = (self.Vp, C)
        return s


# --------------------------------------------------------------------------------------------
# layers: each forward returns (output, cache); each backward takes the cache and the output
# gradient, ACCUMULATES parameter gradients into g and returns the input gradient.

def norm_fwd(cfg, x, w, b):
    if cfg.rms:
        r = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + cfg.eps)
        xh = x * r
        return xh * w, (xh, r)
    mu = np.mean(x, axis=-1, keepdims=True)
    r = 1.0 / np.sqrt(np.mean((x - mu) ** 2, axis=-1, keepdims=True) + cfg.eps)
    xh = (x - mu) * r
    return xh * w + b, (xh, r)


def norm_bwd(cfg, dy, cache, w, gw, gb):
    xh, r = cache
    gw += np.sum(dy * xh, axis=tuple(range(dy.ndim - 1)))
    dxh = dy * w
    if cfg.rms:  # y = x r: dx = r (dxh - xh mean(dxh xh))
        return r * (dxh - xh * np.mean(dxh * xh, axis=-1, keepdims=True))
    gb += np.sum(dy, axis=tuple(range(dy.ndim - 1)))
    return r * (dxh - np.mean(dxh, axis=-1, keepdims=True) - xh * np.mean(dxh * xh, axis=-1, keepdims=True))


def linear_fwd(x, w, b):
    y = x @ w.T
    return y + b if b is not None else y


def linear_bwd(dy, x, w, gw, gb):
    n = dy.shape[-1]
    gw += dy.reshape(-1, n).T @ x.reshape(-1, x.shape[-1])
    if gb is not None:
        gb += dy.reshape(-1, n).sum(axis=0)
    return dy @ w


GELU_C = math.sqrt(2.0 / math.pi)


def gelu_fwd(u):
    th = np.tanh(GELU_C * (u + 0.044715 * u ** 3))
    return 0.5 * u * (1.0 + th), th


def gelu_bwd(dy, u, th):
    return dy * (0.5 * (1.0 + th) + 0.5 * u * (1.0 - th * th) * GELU_C * (1.0 + 3 * 0.044715 * u * u))


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def rope_tables(cfg, T):
    inv = 1.0 / cfg.base ** (np.arange(0, cfg.rot, 2, dtype=np.float64) / cfg.rot)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]  # [T, rot/2]
    return np.cos(ang), np.sin(ang)


def rope_fwd(cfg, x, cos, sin):
    """x [B, H, T, HD]: rotate-half on channels [0, rot)."""
    h = cfg.rot // 2
    x1, x2 = x[..., :h], x[..., h:cfg.rot]
    out = x.copy()
    out[..., :h] = x1 * cos - x2 * sin
    out[..., h:cfg.rot] = x2 * cos + x1 * sin
    return out


def rope_bwd(cfg, d, cos, sin):
    """The transpose of the rotation: rotate by -angle."""
    h = cfg.rot // 2
    d1, d2 = d[..., :h], d[..., h:cfg.rot]
    out = d.copy()
    out[..., :h] = d1 * cos + d2 * sin
    out[..., h:cfg.rot] = d2 * cos - d1 * sin
    return out


def attn_fwd(cfg, qkv, B, T):
    """qkv [B, T, (NH + 2 NKV) HD] -> [B, T, NH HD]."""
    NH, NKV, HD = cfg.NH, cfg.NKV, cfg.HD
    rep = NH // NKV
    g = qkv.reshape(B, T, NKV, rep + 2, HD)
    q = g[:, :, :, :rep, :].reshape(B, T, NH, HD).transpose(0, 2, 1, 3)  # head h = g rep + r
    k = g[:, :, :, rep, :].transpose(0, 2, 1, 3)                           # [B, NKV, T, HD]
    v = g[:, :, :, rep + 1, :].transpose(0, 2, 1, 3)
    if cfg.rope:
        cos, sin = rope_tables(cfg, T)
        q, k = rope_fwd(cfg, q, cos, sin), rope_fwd(cfg, k, cos, sin)
    kr, vr = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)  # HF repeat_kv
    scale = 1.0 / math.sqrt(HD)
    s = (q @ kr.transpose(0, 1, 3, 2)) * scale
    s = np.where(np.tril(np.ones((T, T), dtype=bool)), s, -np.inf)
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    o = p @ vr  # [B, NH, T, HD]
    return o.transpose(0, 2, 1, 3).reshape(B, T, NH * HD), (q, kr, vr, p)


def attn_bwd(cfg, do, cache, B, T):
    NH, NKV, HD = cfg.NH, cfg.NKV, cfg.HD
    rep = NH // NKV
    q, kr, vr, p = cache
    do = do.reshape(B, T, NH, HD).transpose(0, 2, 1, 3)
    dvr = p.transpose(0, 1, 3, 2) @ do
    dp = do @ vr.transpose(0, 1, 3, 2)
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))  # masked entries have p = 0
    scale = 1.0 / math.sqrt(HD)
    dq = (ds @ kr) * scale
    dkr = (ds.transpose(0, 1, 3, 2) @ q) * scale
    dk = dkr.reshape(B, NKV, rep, T, HD).sum(axis=2)  # the K/V heads feed rep query heads
    dv = dvr.reshape(B, NKV, rep, T, HD).sum(axis=2)
    if cfg.rope:
        cos, sin = rope_tables(cfg, T)
        dq, dk = rope_bwd(cfg, dq, cos, sin), rope_bwd(cfg, dk, cos, sin)
    dg = np.empty((B, T, NKV, rep + 2, HD))
    dg[:, :, :, :rep, :] = dq.transpose(0, 2, 1, 3).reshape(B, T, NKV, rep, HD)
    dg[:, :, :, rep, :] = dk.transpose(0, 2, 1, 3)
    dg[:, :, :, rep + 1, :] = dv.transpose(0, 2, 1, 3)
    return dg.reshape(B, T, (NH + 2 * NKV) * HD)


# --------------------------------------------------------------------------------------------
# the model

def forward_backward(cfg, P, x, y, backward=True):
    """Mean token loss and (if backward) the gradient of every parameter."""
    B, T = x.shape
    N = B * T
    G = {k: np.zeros_like(v) for k, v in P.items()} if backward else None
    gp = (lambda k: G[k] if (backward and k in G) else None)
    P_ = lambda k: P.get(k)

    h = P["embed.weight"][x]
    if not cfg.rope:
        h = h + P["pos.weight"][:T][None]
    caches = []
    for l in range(cfg.L):
        p = f"layer{l}."
        h_in = h
        a, c_n1 = norm_fwd(cfg, h, P[p + "ln1.weight"], P_(p + "ln1.bias"))
        qkv = linear_fwd(a, P[p + "attn.qkv.weight"], P_(p + "attn.qkv.bias"))
        o, c_att = attn_fwd(cfg, qkv, B, T)
        h = h + linear_fwd(o, P[p + "attn.proj.weight"], P_(p + "attn.proj.bias"))
        h_mid = h
        m, c_n2 = norm_fwd(cfg, h, P[p + "ln2.weight"], P_(p + "ln2.bias"))
        u = linear_fwd(m, P[p + "mlp.fc1.weight"], P_(p + "mlp.fc1.bias"))
        if cfg.swiglu:
            gate, up = u[..., :cfg.F], u[..., cfg.F:]
            sg = sigmoid(gate)
            act = gate * sg * up
            c_act = (gate, up, sg)
        else:
            act, th = gelu_fwd(u)
            c_act = (u, th)
        h = h + linear_fwd(act, P[p + "mlp.fc2.weight"], P_(p + "mlp.fc2.bias"))
        caches.append((h_in, a, c_n1, o, c_att, h_mid, m, c_n2, c_act, act))
    z, c_nf = norm_fwd(cfg, h, P["lnf.weight"], P_("lnf.bias"))
    head = "output_layer.weight" if cfg.untie else "embed.weight"
    W = P[head][:cfg.V]  # padded rows are not in the softmax
    logits = z @ W.T
    mx = logits.max(axis=-1, keepdims=True)
    lse = mx[..., 0] + np.log(np.exp(logits - mx).sum(axis=-1))
    tok = np.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
    loss = float(np.mean(lse - tok))
    if not backward:
        return loss, None

    # cross-entropy and head
    dlog = np.exp(logits - lse[..., None])
    np.put_along_axis(dlog, y[..., None], np.take_along_axis(dlog, y[..., None], axis=-1) - 1.0, axis=-1)
    dlog /= N
    G[head][:cfg.V] += dlog.reshape(N, cfg.V).T @ z.reshape(N, cfg.C)
    dz = dlog @ W
    dh = norm_bwd(cfg, dz, c_nf, P["lnf.weight"], G["lnf.weight"], gp("lnf.bias"))
    for l in reversed(range(cfg.L)):
        p = f"layer{l}."
        h_in, a, c_n1, o, c_att, h_mid, m, c_n2, c_act, act = caches[l]
        # MLP
        dact = linear_bwd(dh, act, P[p + "mlp.fc2.weight"], G[p + "mlp.fc2.weight"], gp(p + "mlp.fc2.bias"))
        if cfg.swiglu:
            gate, up, sg = c_act
            du = np.concatenate([dact * up * sg * (1.0 + gate * (1.0 - sg)), dact * gate * sg], axis=-1)
        else:
            du = gelu_bwd(dact, *c_act)
        dm = linear_bwd(du, m, P[p + "mlp.fc1.weight"], G[p + "mlp.fc1.weight"], gp(p + "mlp.fc1.bias"))
        dh = dh + norm_bwd(cfg, dm, c_n2, P[p + "ln2.weight"], G[p + "ln2.weight"], gp(p + "ln2.bias"))
        # attention
        do = linear_bwd(dh, o, P[p + "attn.proj.weight"], G[p + "attn.proj.weight"], gp(p + "attn.proj.bias"))
        dqkv = attn_bwd(cfg, do, c_att, B, T)
        da = linear_bwd(dqkv, a, P[p + "attn.qkv.weight"], G[p + "attn.qkv.weight"], gp(p + "attn.qkv.bias"))
        dh = dh + norm_bwd(cfg, da, c_n1, P[p + "ln1.weight"], G[p + "ln1.weight"], gp(p + "ln1.bias"))
    if not cfg.rope:
        G["pos.weight"][:T] += dh.sum(axis=0)
    np.add.at(G["embed.weight"], x.reshape(-1), dh.reshape(N, cfg.C))
    return loss, G


# --------------------------------------------------------------------------------------------
# checks

def finite_difference_check(cfg, P, G, x, y, coords, rng, log):
    """Central differences of the reference's own loss against its backward."""
    failures = 0
    for name in sorted(P):
        t, g = P[name], G[name]
        flat_g = g.reshape(-1)
        picks = list(rng.choice(t.size, size=min(coords, t.size), replace=False))
        picks.append(int(np.argmax(np.abs(flat_g))))
        if name in ("embed.weight", "output_layer.weight") and cfg.Vp > cfg.V:
            picks.append(cfg.V * cfg.C + int(rng.integers(0, (cfg.Vp - cfg.V) * cfg.C)))  # a padded row
        scale = float(np.max(np.abs(flat_g)))
        worst = 0.0
        for i in picks:
            flat = t.reshape(-1)
            old = flat[i]
            flat[i] = old + FD_STEP
            lp, _ = forward_backward(cfg, P, x, y, backward=False)
            flat[i] = old - FD_STEP
            lm, _ = forward_backward(cfg, P, x, y, backward=False)
            flat[i] = old
            worst = max(worst, abs((lp - lm) / (2 * FD_STEP) - flat_g[i]))
        ok = worst <= FD_RTOL * scale + FD_ATOL
        failures += not ok
        if not ok or log:
            print(f"  fd {name:32s} {len(picks)} coords, max|fd - grad| {worst:.2e} "
                  f"(max|grad| {scale:.2e}) {'ok' if ok else 'FAIL'}")
    # one random direction through every parameter at once
    d = {k: rng.standard_normal(v.shape) for k, v in P.items()}
    norm = math.sqrt(sum(float(np.sum(v * v)) for v in d.values()))
    d = {k: v / norm for k, v in d.items()}  # a unit step: the FD truncation error stays ~h^2
    lin = sum(float(np.sum(G[k] * d[k])) for k in P)
    P0 = {k: v.copy() for k, v in P.items()}
    for k in P:
        P[k][...] = P0[k] + FD_STEP * d[k]
    lp, _ = forward_backward(cfg, P, x, y, backward=False)
    for k in P:
        P[k][...] = P0[k] - FD_STEP * d[k]
    lm, _ = forward_backward(cfg, P, x, y, backward=False)
    for k in P:
        P[k][...] = P0[k]
    fd = (lp - lm) / (2 * FD_STEP)
    ok = abs(fd - lin) <= 1e-6 * abs(lin) + 1e-9
    failures += not ok
    print(f"  fd random direction: {fd:.10e} vs grad . d {lin:.10e} {'ok' if ok else 'FAIL'}")
    return failures


def main():
    ap = argparse.ArgumentParser(description="float64 NumPy reference of one lossytp step")
    ap.add_argument("dir")
    ap.add_argument("--fd-coords", type=int, default=3, help="random coordinates per tensor (default 3)")
    ap.add_argument("--no-fd", action="store_true", help="skip the finite-difference self-check")
    ap.add_argument("--quiet", action="store_true", help="print only failures and the summary")
    a = ap.parse_args()

    with open(os.path.join(a.dir, "meta.json")) as f:
        meta = json.load(f)
    cfg = Cfg(meta["config"])
    B, T = meta["B"], meta["T"]
    x = np.array(meta["x"], dtype=np.int64).reshape(B, T)
    y = np.array(meta["y"], dtype=np.int64).reshape(B, T)
    P = read_safetensors(os.path.join(a.dir, "params.safetensors"))
    Gl = read_safetensors(os.path.join(a.dir, "grads.safetensors"))
    c = meta["config"]
    print(f"{a.dir}: V {cfg.V} (padded {cfg.Vp}), L {cfg.L}, C {cfg.C}, heads {cfg.NH}/{cfg.NKV} "
          f"(HD {cfg.HD}), F {cfg.F}, {c['normalization']}, {c['position_embedding_type']}"
          f"{f' (rot {cfg.rot} of {cfg.HD}, base {cfg.base:g})' if cfg.rope else ''}, "
          f"{'SwiGLU' if cfg.swiglu else 'GELU'}, {'bias' if cfg.bias else 'no bias'}, "
          f"{'untied' if cfg.untie else 'tied'}; B {B}, T {T}")
    failures = 0

    # the parameter set and shapes lossytp must have
    want = cfg.shapes()
    for name, shape in want.items():
        if name not in P:
            print(f"FAIL: lossytp has no parameter {name} {shape}")
            failures += 1
        elif tuple(P[name].shape) != shape:
            print(f"FAIL: {name}: lossytp shape {tuple(P[name].shape)}, expected {shape}")
            failures += 1
    for name in P:
        if name not in want:
            print(f"FAIL: lossytp has an unexpected parameter {name} {tuple(P[name].shape)}")
            failures += 1
    if set(Gl) != set(P):
        print("FAIL: grads.safetensors and params.safetensors name different tensors")
        failures += 1
    if failures:
        print(f"{failures} failure(s): the parameter layout differs; no numbers compared")
        return 1
    if x.min() < 0 or x.max() >= cfg.V or y.min() < 0 or y.max() >= cfg.V:
        print("FAIL: token ids outside [0, V)")
        return 1

    loss, G = forward_backward(cfg, P, x, y)

    if not a.no_fd:
        print("reference backward vs central finite differences (float64):")
        failures += finite_difference_check(cfg, P, G, x, y, a.fd_coords, np.random.default_rng(0),
                                            log=not a.quiet)

    rel = abs(meta["loss"] - loss) / abs(loss)
    ok = rel <= LOSS_RTOL
    failures += not ok
    print(f"loss: lossytp {meta['loss']:.8f}, reference {loss:.8f}, relative diff {rel:.2e} "
          f"(tol {LOSS_RTOL:g}) {'ok' if ok else 'FAIL'}")

    print(f"{'tensor':32s} {'shape':>14s} {'max|ref|':>10s} {'max|diff|':>10s} {'ratio':>9s}")
    for name in sorted(want, key=lambda n: list(want).index(n)):
        r, g = G[name], Gl[name]
        scale = float(np.max(np.abs(r)))
        diff = float(np.max(np.abs(g - r)))
        tol = GRAD_RTOL * scale + GRAD_ATOL
        ok = diff <= tol and np.all(np.isfinite(g))
        extra = ""
        if name in ("embed.weight", "output_layer.weight") and cfg.Vp > cfg.V:
            pad_nz = int(np.count_nonzero(g[cfg.V:]))
            if pad_nz:
                ok = False
                extra = f"  padded rows: {pad_nz} nonzero gradient entries"
            else:
                extra = f"  padded rows {cfg.V}..{cfg.Vp - 1}: exactly zero"
        failures += not ok
        if not ok or not a.quiet:
            print(f"{name:32s} {str(tuple(r.shape)):>14s} {scale:10.3e} {diff:10.3e} "
                  f"{diff / scale if scale else 0:9.2e} {'ok' if ok else 'FAIL'}{extra}")
    print(f"{'PASS' if failures == 0 else f'FAIL ({failures} failure(s))'}: {a.dir}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
