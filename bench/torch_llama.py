#!/usr/bin/env python3
"""PyTorch CPU peer of `lossytp train --model llama-tiny` for bench/run.sh llama.

Model: Llama, vocab 4096, seq 256, 4 layers, hidden 256, 8 heads, 4 KV heads (GQA), SwiGLU MLP
with ffn 704, RMSNorm eps 1e-5, RoPE (rotate-half) base 10000, no biases, untied output layer,
fp32; AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only), global-norm
clipping at 1.0, micro-batch 8 (2,048 tokens per step).

Two implementations (--impl):
  hf    transformers' LlamaForCausalLM with attn_implementation="sdpa" (the default when
        transformers imports: the PyTorch 2.x venv of bench/setup_torch_venv.sh);
  hand  the same Llama written in plain torch, which also runs on Debian's torch 1.13 (no
        scaled_dot_product_attention there: q k^T, causal mask, softmax, @ v; with torch >= 2
        --sdpa on uses SDPA).
Both compute the loss as lossytp does: cross-entropy of the logits at x against y (no shift).

Each timed step is a full training step on random tokens: zero_grad, forward, cross-entropy,
backward, clip_grad_norm_, optimizer.step(). Prints one JSON object on stdout (the same keys as
bench/torch_gpt.py): the median step time over the steps after the warm-up, tokens/s, the peak
RSS (getrusage).

    ~/.cache/lossytp/venv-torch/bin/python bench/torch_llama.py --threads 1 --iters 30 --warmup 5
    /usr/bin/python3 bench/torch_llama.py --threads 1          # Debian torch 1.13: --impl hand
The thread count is applied to torch and to the BLAS/OpenMP pools (OMP, OPENBLAS, MKL) through
the environment before torch is imported; with more than one thread OMP_WAIT_POLICY=PASSIVE.
"""
import argparse
import json
import math
import os
import resource
import statistics
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=30, help="timed + warm-up steps in all")
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the median")
    p.add_argument("--impl", choices=["auto", "hf", "hand"], default="auto",
                   help="hf: transformers' LlamaForCausalLM; hand: plain torch (auto: hf when "
                        "transformers imports)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-length", type=int, default=256)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--num-attention-heads", type=int, default=8)
    p.add_argument("--num-query-groups", type=int, default=4, help="K/V heads")
    p.add_argument("--ffn-hidden-size", type=int, default=704)
    p.add_argument("--norm-epsilon", type=float, default=1e-5)
    p.add_argument("--rotary-base", type=float, default=10000.0)
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--foreach", choices=["auto", "on", "off"], default="on",
                   help="AdamW multi-tensor implementation")
    p.add_argument("--sdpa", choices=["auto", "on", "off"], default="auto",
                   help="--impl hand: attention through F.scaled_dot_product_attention (auto: when "
                        "torch has it)")
    p.add_argument("--seed", type=int, default=1234)
    a = p.parse_args()
    if a.iters <= a.warmup:
        p.error("--iters must be larger than --warmup")
    if a.hidden_size % a.num_attention_heads or a.num_attention_heads % a.num_query_groups:
        p.error("hidden % heads and heads % query groups must be 0")
    return a


args = parse_args()
# Thread pools are sized when torch (and OpenBLAS/MKL) load: set them first.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)
if args.threads > 1:
    # Spin-waiting OpenMP workers fight OpenBLAS's own threads on 2 cores (~1/3 slower).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(args.threads)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass
HAVE_SDPA = hasattr(F, "scaled_dot_product_attention")
if args.sdpa == "on" and not HAVE_SDPA:
    sys.exit(f"--sdpa on: torch {torch.__version__} has no scaled_dot_product_attention")
USE_SDPA = args.sdpa == "on" or (args.sdpa == "auto" and HAVE_SDPA)

IMPL = args.impl
TRANSFORMERS_VERSION = None
if IMPL in ("auto", "hf"):
    try:
        import transformers  # noqa: E402
        from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
        TRANSFORMERS_VERSION = transformers.__version__
        IMPL = "hf"
    except ImportError as e:
        if IMPL == "hf":
            sys.exit(f"--impl hf: transformers does not import ({e}); run bench/setup_torch_venv.sh")
        IMPL = "hand"


# ---- the hand-written Llama (torch 1.13 compatible)

class RMSNorm(nn.Module):
    def __init__(self, C, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(C))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, C, nh, nkv, T):
        super().__init__()
        self.nh, self.nkv, self.hd = nh, nkv, C // nh
        self.q_proj = nn.Linear(C, nh * self.hd, bias=False)
        self.k_proj = nn.Linear(C, nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(C, nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(nh * self.hd, C, bias=False)
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool)).view(1, 1, T, T)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.nh // self.nkv
        if rep > 1:  # HF repeat_kv: query head h uses K/V head h // rep
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        if USE_SDPA:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.hd))
            att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))
            y = F.softmax(att, dim=-1) @ v
        return self.o_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, C, Fd):
        super().__init__()
        self.gate_proj = nn.Linear(C, Fd, bias=False)
        self.up_proj = nn.Linear(C, Fd, bias=False)
        self.down_proj = nn.Linear(Fd, C, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, a):
        super().__init__()
        C = a.hidden_size
        self.input_layernorm = RMSNorm(C, a.norm_epsilon)
        self.self_attn = Attention(C, a.num_attention_heads, a.num_query_groups, a.seq_length)
        self.post_attention_layernorm = RMSNorm(C, a.norm_epsilon)
        self.mlp = MLP(C, a.ffn_hidden_size)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, a):
        super().__init__()
        C, hd = a.hidden_size, a.hidden_size // a.num_attention_heads
        self.embed_tokens = nn.Embedding(a.vocab_size, C)
        self.layers = nn.ModuleList([Block(a) for _ in range(a.num_layers)])
        self.norm = RMSNorm(C, a.norm_epsilon)
        self.lm_head = nn.Linear(C, a.vocab_size, bias=False)  # untied
        inv = 1.0 / a.rotary_base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        freqs = torch.arange(a.seq_length, dtype=torch.float32)[:, None] * inv[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx):
        T = idx.shape[1]
        cos, sin = self.cos[:T], self.sin[:T]
        x = self.embed_tokens(idx)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


def build_model(a):
    if IMPL == "hand":
        model = Llama(a)
        return model, (lambda x: model(x))
    kw = dict(vocab_size=a.vocab_size, hidden_size=a.hidden_size, intermediate_size=a.ffn_hidden_size,
              num_hidden_layers=a.num_layers, num_attention_heads=a.num_attention_heads,
              num_key_value_heads=a.num_query_groups, max_position_embeddings=a.seq_length,
              rms_norm_eps=a.norm_epsilon, hidden_act="silu", tie_word_embeddings=False,
              attention_bias=False, mlp_bias=False, initializer_range=0.02, use_cache=False)
    major = int(TRANSFORMERS_VERSION.split(".")[0])
    if major >= 5:  # v5: rope_theta lives in rope_parameters
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": a.rotary_base}
    else:
        kw["rope_theta"] = a.rotary_base
    cfg = LlamaConfig(**kw)
    try:
        model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa")
    except (TypeError, AttributeError):
        cfg._attn_implementation = "sdpa"
        model = LlamaForCausalLM(cfg)
    return model, (lambda x: model(input_ids=x, use_cache=False).logits)


def main():
    torch.manual_seed(args.seed)
    V, T, B = args.vocab_size, args.seq_length, args.micro_batch_size
    model, logits_of = build_model(args)
    model = model.float()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    foreach = {"auto": None, "on": True, "off": False}[args.foreach]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8, foreach=foreach)
    gen = torch.Generator().manual_seed(args.seed)

    times, losses = [], []
    for it in range(args.iters):
        data = torch.randint(0, V, (B, T + 1), generator=gen)
        x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = logits_of(x)
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))

    timed = times[args.warmup:]
    step = statistics.median(timed)
    # flops per token as lossytp counts them: 6 N + 12 L T d (no position embeddings here)
    flops_per_token = 6.0 * n_params + 12.0 * args.num_layers * T * args.hidden_size
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({
        "impl": "pytorch-hf-llama" if IMPL == "hf" else "pytorch-hand-llama",
        "torch_version": torch.__version__,
        "transformers_version": TRANSFORMERS_VERSION if IMPL == "hf" else None,
        "threads": args.threads,
        "device": "cpu",
        "attention": "sdpa" if (IMPL == "hf" or USE_SDPA) else "q k^T softmax v",
        "torch_num_threads": torch.get_num_threads(),
        "adamw_foreach": args.foreach,
        "num_parameters": n_params,
        "tokens_per_step": B * T,
        "iters": args.iters,
        "warmup": args.warmup,
        "median_step_time_s": step,
        "min_step_time_s": min(timed),
        "step_times_s": times,
        "tokens_per_second": B * T / step,
        "model_gflops": flops_per_token * B * T / step / 1e9,
        "flops_per_token": flops_per_token,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "peak_rss_mib": peak_kib / 1024.0,
    }))


if __name__ == "__main__":
    sys.exit(main())
