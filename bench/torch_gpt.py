#!/usr/bin/python3
"""PyTorch CPU reference for bench/run.sh: a nanoGPT-style GPT-2 with lossytp's gpt-tiny config.

Same model as `lossytp train --model gpt-tiny`: vocab 4096, seq 256, 4 layers, hidden 256, 4 heads,
MLP 4x with tanh-GELU, pre-LayerNorm, learned positions, biases everywhere, embedding tied to the
LM head, AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only), global-norm gradient
clipping at 1.0, micro-batch 8, fp32. Attention is written by hand (torch 1.13 has no
scaled_dot_product_attention): scores = q k^T / sqrt(hd), causal mask, softmax, @ v.

Each timed step is a full training step on random tokens: zero_grad, forward, cross-entropy,
backward, clip_grad_norm_, optimizer.step(). Prints one JSON object on stdout with the median step
time over the steps after the warm-up, tokens/s and the peak RSS (resource.getrusage).

Run with Debian's python (/usr/bin/python3, which has python3-torch):
    /usr/bin/python3 bench/torch_gpt.py --threads 1 --iters 30 --warmup 5
The thread count is applied to torch AND to the BLAS/OpenMP pools through the environment,
before torch is imported: Debian's torch calls OpenBLAS as a generic BLAS, which ignores
torch.set_num_threads().
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
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-length", type=int, default=256)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--num-attention-heads", type=int, default=4)
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--foreach", choices=["auto", "on", "off"], default="on",
                   help="AdamW multi-tensor implementation (on: the faster one on this CPU)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: the GPU peer of bench/run_gpu.sh (needs a CUDA build of torch)")
    p.add_argument("--bf16", action="store_true",
                   help="torch.autocast to bf16 (fp32 master weights), as lossytp --bf16")
    p.add_argument("--sdpa", choices=["auto", "on", "off"], default="auto",
                   help="attention through F.scaled_dot_product_attention (torch >= 2; auto: on cuda "
                        "when available) instead of the hand-written q k^T softmax v")
    a = p.parse_args()
    if a.iters <= a.warmup:
        p.error("--iters must be larger than --warmup")
    return a


args = parse_args()
# Thread pools are sized when torch (and OpenBLAS) load: set them first.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)
if args.threads > 1:
    # Spin-waiting OpenMP workers fight OpenBLAS's own threads on 2 cores (~1/3 slower).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(args.threads)
HAVE_SDPA = hasattr(F, "scaled_dot_product_attention")
if args.sdpa == "on" and not HAVE_SDPA:
    sys.exit(f"--sdpa on: torch {torch.__version__} has no scaled_dot_product_attention")
USE_SDPA = args.sdpa == "on" or (args.sdpa == "auto" and HAVE_SDPA and args.device == "cuda")
if args.device == "cuda" and not torch.cuda.is_available():
    sys.exit(f"--device cuda: torch {torch.__version__} sees no CUDA GPU (Debian's python3-torch is "
             "CPU-only; on the GPU machine: pip install torch)")
DEV = torch.device(args.device)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass


class CausalSelfAttention(nn.Module):
    def __init__(self, C, nh, T):
        super().__init__()
        self.nh, self.hd = nh, C // nh
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool)).view(1, 1, T, T)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.nh, self.hd).transpose(1, 2)
        k = k.view(B, T, self.nh, self.hd).transpose(1, 2)
        v = v.view(B, T, self.nh, self.hd).transpose(1, 2)
        if USE_SDPA:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.hd))
        att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.c_fc = nn.Linear(C, 4 * C)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, C, nh, T):
        super().__init__()
        self.ln_1 = nn.LayerNorm(C)
        self.attn = CausalSelfAttention(C, nh, T)
        self.ln_2 = nn.LayerNorm(C)
        self.mlp = MLP(C)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, V, T, L, C, nh):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C)
        self.h = nn.ModuleList([Block(C, nh, T) for _ in range(L)])
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx, targets):
        B, T = idx.shape
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def main():
    torch.manual_seed(args.seed)
    V, T, B = args.vocab_size, args.seq_length, args.micro_batch_size
    model = GPT(V, T, args.num_layers, args.hidden_size, args.num_attention_heads).to(DEV)
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
        x, y = data[:, :-1].contiguous().to(DEV), data[:, 1:].contiguous().to(DEV)
        if DEV.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=DEV.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if DEV.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))

    timed = times[args.warmup:]
    step = statistics.median(timed)
    # flops per token as lossytp counts them: 6 N + 12 L T d, N without position embeddings.
    n_flops = n_params - T * args.hidden_size
    flops_per_token = 6.0 * n_flops + 12.0 * args.num_layers * T * args.hidden_size
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({
        "impl": "pytorch",
        "torch_version": torch.__version__,
        "threads": args.threads,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if DEV.type == "cuda" else None,
        "bf16": args.bf16,
        "attention": "sdpa" if USE_SDPA else "q k^T softmax v",
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
