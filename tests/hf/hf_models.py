#!/usr/bin/env python3
"""Tiny Hugging Face-format models and an independent reference forward, for lossytp's import and
export tests (tests/cli/hf_checkpoint.sh). NumPy only: the safetensors files are written and read
by hand from the format's definition, and the forward follows transformers' GPT2LMHeadModel and
LlamaForCausalLM in their own tensor layouts (Conv1D [in, out], separate q/k/v, gate/up), in
float64. Nothing here knows lossytp's layouts.

  hf_models.py make DIR --arch gpt2|llama [--dtype F32|F16|BF16] [--no-prefix] [--tied|--untied]
                        [--gqa N] [--shards K] [--rope-llama3 FACTOR] [--seed S]
      DIR/config.json, model.safetensors (or K shards + index), train.bin and eval_one.bin
      (raw uint16 tokens; eval_one.bin is exactly one sequence of n_positions + 1 tokens) and
      reference.json {"loss": mean cross-entropy of eval_one.bin's sequence}
  hf_models.py loss DIR TOKENS.bin     reference loss of a uint16 token file's first T+1 tokens
  hf_models.py compare A B             every tensor of A equals B's (GPT-2's "transformer." prefix
                                       ignored), config shapes equal; exit 1 naming the first difference
  hf_models.py corrupt DIR KIND        damage DIR/model.safetensors: truncate | offsets | shape
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np

# ---- safetensors ----------------------------------------------------------------------------

DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "F64": (np.float64, 8), "BF16": (None, 2)}


def to_bf16_bits(a):
    """float32 -> bfloat16 bit patterns, round to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return r.astype(np.uint16)


def from_bf16_bits(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def encode(a, dtype):
    if dtype == "BF16":
        return to_bf16_bits(a).tobytes()
    return np.ascontiguousarray(a, dtype=DTYPES[dtype][0]).tobytes()


def write_safetensors(path, tensors, dtype, metadata=None):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        b = encode(tensors[name], dtype)
        header[name] = {"dtype": dtype, "shape": list(tensors[name].shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b = data[8 + n + t["data_offsets"][0]:8 + n + t["data_offsets"][1]]
        if t["dtype"] == "BF16":
            a = from_bf16_bits(np.frombuffer(b, dtype=np.uint16))
        else:
            a = np.frombuffer(b, dtype=DTYPES[t["dtype"]][0])
        out[name] = a.astype(np.float64).reshape(t["shape"])
    return out, header


def read_dir(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        files = sorted(set(json.load(open(idx))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for f in files:
        out.update(read_safetensors(os.path.join(d, f))[0])
    return out


# ---- models ---------------------------------------------------------------------------------

def make(a):
    rng = np.random.default_rng(a.seed)
    V, C, L, T = 300, 64, 2, 32
    os.makedirs(a.dir, exist_ok=True)
    t = {}
    w = lambda *s: (0.05 * rng.standard_normal(s)).astype(np.float32)
    if a.arch == "gpt2":
        nh, F = 4, 128
        p = "" if a.no_prefix else "transformer."
        cfg = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": V, "n_positions": T,
               "n_embd": C, "n_layer": L, "n_head": nh, "n_inner": None, "activation_function": "gelu_new",
               "layer_norm_epsilon": 1e-5, "bos_token_id": V - 1, "eos_token_id": V - 1}
        t[p + "wte.weight"] = w(V, C)
        t[p + "wpe.weight"] = w(T, C)
        for l in range(L):
            q = f"{p}h.{l}."
            for ln in ("ln_1", "ln_2"):
                t[q + ln + ".weight"] = (1 + 0.1 * rng.standard_normal(C)).astype(np.float32)
                t[q + ln + ".bias"] = w(C)
            t[q + "attn.c_attn.weight"] = w(C, 3 * C)
            t[q + "attn.c_attn.bias"] = w(3 * C)
            t[q + "attn.c_proj.weight"] = w(C, C)
            t[q + "attn.c_proj.bias"] = w(C)
            t[q + "mlp.c_fc.weight"] = w(C, 4 * C)
            t[q + "mlp.c_fc.bias"] = w(4 * C)
            t[q + "mlp.c_proj.weight"] = w(4 * C, C)
            t[q + "mlp.c_proj.bias"] = w(C)
            t[q + "attn.bias"] = np.tril(np.ones((T, T), np.float32))[None, None]  # an old buffer
        t[p + "ln_f.weight"] = (1 + 0.1 * rng.standard_normal(C)).astype(np.float32)
        t[p + "ln_f.bias"] = w(C)
        if a.untied:
            cfg["tie_word_embeddings"] = False
            t["lm_head.weight"] = w(V, C)
    else:
        nh, F = 8, 96
        nkv = a.gqa or nh
        hd = C // nh
        cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": C,
               "intermediate_size": F, "num_hidden_layers": L, "num_attention_heads": nh,
               "num_key_value_heads": nkv, "hidden_act": "silu", "max_position_embeddings": T,
               "rms_norm_eps": 1e-5, "rope_theta": 5000.0, "tie_word_embeddings": bool(a.tied),
               "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2}
        if a.rope_llama3:  # an original context of 64 puts this model's 4 frequencies in all three bands
            cfg["rope_scaling"] = {"rope_type": "llama3", "factor": a.rope_llama3, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
        t["model.embed_tokens.weight"] = w(V, C)
        for l in range(L):
            q = f"model.layers.{l}."
            t[q + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(C)).astype(np.float32)
            t[q + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(C)).astype(np.float32)
            t[q + "self_attn.q_proj.weight"] = w(nh * hd, C)
            t[q + "self_attn.k_proj.weight"] = w(nkv * hd, C)
            t[q + "self_attn.v_proj.weight"] = w(nkv * hd, C)
            t[q + "self_attn.o_proj.weight"] = w(C, nh * hd)
            t[q + "mlp.gate_proj.weight"] = w(F, C)
            t[q + "mlp.up_proj.weight"] = w(F, C)
            t[q + "mlp.down_proj.weight"] = w(C, F)
            t[q + "self_attn.rotary_emb.inv_freq"] = np.zeros(hd // 2, np.float32)  # an old buffer
        t["model.norm.weight"] = (1 + 0.1 * rng.standard_normal(C)).astype(np.float32)
        if not a.tied:
            t["lm_head.weight"] = w(V, C)
    cfg["torch_dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[a.dtype]
    json.dump(cfg, open(os.path.join(a.dir, "config.json"), "w"), indent=1)
    for f in os.listdir(a.dir):
        if f.startswith("model") and f.endswith((".safetensors", ".json")):
            os.remove(os.path.join(a.dir, f))
    if a.shards > 1:
        names = sorted(t)
        parts = [names[i::a.shards] for i in range(a.shards)]
        wm, total = {}, 0
        for i, part in enumerate(parts):
            fn = f"model-{i + 1:05d}-of-{a.shards:05d}.safetensors"
            write_safetensors(os.path.join(a.dir, fn), {n: t[n] for n in part}, a.dtype, {"format": "pt"})
            for n in part:
                wm[n] = fn
                total += len(encode(t[n], a.dtype))
        json.dump({"metadata": {"total_size": total}, "weight_map": wm},
                  open(os.path.join(a.dir, "model.safetensors.index.json"), "w"), indent=1)
    else:
        write_safetensors(os.path.join(a.dir, "model.safetensors"), t, a.dtype, {"format": "pt"})
    rng.integers(0, V, 4000).astype(np.uint16).tofile(os.path.join(a.dir, "train.bin"))
    seq = rng.integers(0, V, T + 1).astype(np.uint16)
    seq.tofile(os.path.join(a.dir, "eval_one.bin"))
    loss = reference_loss(a.dir, seq.astype(np.int64))
    json.dump({"loss": loss}, open(os.path.join(a.dir, "reference.json"), "w"))
    print(f"{a.dir}: {a.arch} ({a.dtype}), reference loss {loss:.8f}")


def layer_norm(x, w, b, eps):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def causal_attention(q, k, v):
    """q [nh, T, hd], k/v [nh, T, hd] -> [T, nh * hd]."""
    nh, T, hd = q.shape
    s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    return (s @ v).transpose(1, 0, 2).reshape(T, nh * hd)


def gelu_new(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def reference_loss(d, seq):
    cfg = json.load(open(os.path.join(d, "config.json")))
    P = read_dir(d)
    ids, tgt = seq[:-1], seq[1:]
    T = len(ids)
    if cfg["model_type"] == "gpt2":
        p = "transformer." if "transformer.wte.weight" in P else ""
        C, nh, eps = cfg["n_embd"], cfg["n_head"], cfg["layer_norm_epsilon"]
        hd = C // nh
        x = P[p + "wte.weight"][ids] + P[p + "wpe.weight"][:T]
        for l in range(cfg["n_layer"]):
            q = f"{p}h.{l}."
            h = layer_norm(x, P[q + "ln_1.weight"], P[q + "ln_1.bias"], eps)
            qkv = h @ P[q + "attn.c_attn.weight"] + P[q + "attn.c_attn.bias"]   # Conv1D: x W + b
            Q, K, Vv = (qkv[:, i * C:(i + 1) * C].reshape(T, nh, hd).transpose(1, 0, 2) for i in range(3))
            x = x + causal_attention(Q, K, Vv) @ P[q + "attn.c_proj.weight"] + P[q + "attn.c_proj.bias"]
            h = layer_norm(x, P[q + "ln_2.weight"], P[q + "ln_2.bias"], eps)
            h = gelu_new(h @ P[q + "mlp.c_fc.weight"] + P[q + "mlp.c_fc.bias"])
            x = x + h @ P[q + "mlp.c_proj.weight"] + P[q + "mlp.c_proj.bias"]
        x = layer_norm(x, P[p + "ln_f.weight"], P[p + "ln_f.bias"], eps)
        head = P.get("lm_head.weight") if cfg.get("tie_word_embeddings", True) is False else P[p + "wte.weight"]
    else:
        C, nh, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["rms_norm_eps"]
        nkv = cfg.get("num_key_value_heads", nh)
        hd = C // nh
        inv = 1.0 / (cfg.get("rope_theta", 10000.0) ** (np.arange(0, hd, 2) / hd))
        rs = cfg.get("rope_scaling") or {}
        if rs.get("rope_type") == "llama3":  # Llama 3.1's frequency scaling, from its definition
            f, lo, hi, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], \
                rs["original_max_position_embeddings"]
            wavelen = 2 * math.pi / inv
            smooth = (old / wavelen - lo) / (hi - lo)
            inv = np.where(wavelen > old / lo, inv / f,
                           np.where(wavelen < old / hi, inv, (1 - smooth) * inv / f + smooth * inv))
        ang = np.arange(T)[:, None] * inv[None, :]
        cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

        def rope(z):  # [n, T, hd], rotate-half
            z1, z2 = z[..., :hd // 2], z[..., hd // 2:]
            return z * cos + np.concatenate([-z2, z1], -1) * sin

        x = P["model.embed_tokens.weight"][ids]
        for l in range(cfg["num_hidden_layers"]):
            q = f"model.layers.{l}."
            h = rms_norm(x, P[q + "input_layernorm.weight"], eps)
            Q = (h @ P[q + "self_attn.q_proj.weight"].T).reshape(T, nh, hd).transpose(1, 0, 2)
            K = (h @ P[q + "self_attn.k_proj.weight"].T).reshape(T, nkv, hd).transpose(1, 0, 2)
            Vv = (h @ P[q + "self_attn.v_proj.weight"].T).reshape(T, nkv, hd).transpose(1, 0, 2)
            Q, K = rope(Q), rope(K)
            rep = nh // nkv  # query head i attends with K/V head i // rep
            K, Vv = np.repeat(K, rep, axis=0), np.repeat(Vv, rep, axis=0)
            x = x + causal_attention(Q, K, Vv) @ P[q + "self_attn.o_proj.weight"].T
            h = rms_norm(x, P[q + "post_attention_layernorm.weight"], eps)
            g = h @ P[q + "mlp.gate_proj.weight"].T
            u = h @ P[q + "mlp.up_proj.weight"].T
            x = x + (g / (1 + np.exp(-g)) * u) @ P[q + "mlp.down_proj.weight"].T
        x = rms_norm(x, P["model.norm.weight"], eps)
        head = P["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False) else P["lm_head.weight"]
    logits = x @ head.T
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
    return float(np.mean(lse - logits[np.arange(T), tgt]))


def compare(a, b):
    A, B = read_dir(a), read_dir(b)
    strip = lambda n: n[len("transformer."):] if n.startswith("transformer.") else n
    skip = lambda n: n.endswith((".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq"))
    A = {strip(n): v for n, v in A.items() if not skip(n)}
    B = {strip(n): v for n, v in B.items() if not skip(n)}
    if set(A) != set(B):
        print("FAIL: tensor names differ:", sorted(set(A) ^ set(B)))
        return 1
    for n in sorted(A):
        if A[n].shape != B[n].shape or not np.array_equal(A[n].astype(np.float32), B[n].astype(np.float32)):
            print(f"FAIL: tensor {n} differs (shapes {A[n].shape} {B[n].shape}, "
                  f"max |diff| {np.max(np.abs(A[n] - B[n])) if A[n].shape == B[n].shape else '-'})")
            return 1
    ca, cb = json.load(open(os.path.join(a, "config.json"))), json.load(open(os.path.join(b, "config.json")))
    for k in ("vocab_size", "n_embd", "n_layer", "n_head", "n_positions", "hidden_size", "intermediate_size",
              "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
              "tie_word_embeddings", "rope_theta", "rms_norm_eps", "layer_norm_epsilon"):
        if k in ca and ca.get(k) != cb.get(k):
            print(f"FAIL: config.json {k}: {ca.get(k)} vs {cb.get(k)}")
            return 1
    _, hdr = read_safetensors(os.path.join(b, "model.safetensors")) if os.path.exists(
        os.path.join(b, "model.safetensors")) else (None, {})
    print(f"ok: {len(A)} tensors identical")
    return 0


def corrupt(d, kind):
    path = os.path.join(d, "model.safetensors")
    data = bytearray(open(path, "rb").read())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    if kind == "truncate":
        data = data[:len(data) - 100]
    elif kind in ("offsets", "shape"):
        names = sorted(k for k in header if k != "__metadata__")
        if kind == "offsets":  # one tensor claims 4 more bytes than it has
            header[names[0]]["data_offsets"][1] += 4
        else:  # a non-square matrix transposed: the same bytes, the wrong shape
            name = next(k for k in names if len(header[k]["shape"]) == 2 and
                        header[k]["shape"][0] != header[k]["shape"][1])
            header[name]["shape"] = header[name]["shape"][::-1]
        h = json.dumps(header).encode()
        h += b" " * ((8 - len(h) % 8) % 8)
        data = struct.pack("<Q", len(h)) + h + data[8 + n:]
    open(path, "wb").write(bytes(data))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    m.add_argument("--arch", choices=["gpt2", "llama"], required=True)
    m.add_argument("--dtype", choices=["F32", "F16", "BF16"], default="F32")
    m.add_argument("--no-prefix", action="store_true")
    m.add_argument("--tied", action="store_true")
    m.add_argument("--untied", action="store_true")
    m.add_argument("--gqa", type=int, default=0)
    m.add_argument("--shards", type=int, default=1)
    m.add_argument("--rope-llama3", type=float, default=0, help="Llama: rope_scaling llama3 with this factor")
    m.add_argument("--seed", type=int, default=1)
    lo = sub.add_parser("loss")
    lo.add_argument("dir")
    lo.add_argument("tokens")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    k = sub.add_parser("corrupt")
    k.add_argument("dir")
    k.add_argument("kind", choices=["truncate", "offsets", "shape"])
    a = ap.parse_args()
    if a.cmd == "make":
        make(a)
    elif a.cmd == "loss":
        cfg = json.load(open(os.path.join(a.dir, "config.json")))
        T = cfg.get("n_positions", cfg.get("max_position_embeddings"))
        seq = np.fromfile(a.tokens, dtype=np.uint16)[:T + 1].astype(np.int64)
        print(f"{reference_loss(a.dir, seq):.10f}")
    elif a.cmd == "compare":
        sys.exit(compare(a.a, a.b))
    elif a.cmd == "corrupt":
        corrupt(a.dir, a.kind)


if __name__ == "__main__":
    main()
