"""A third opinion for tests/reference: Hugging Face transformers' own LlamaForCausalLM,
GPTNeoXForCausalLM (partial RoPE) or GPT2LMHeadModel (float64) on a lossytp_dump_step folder, compared with both the
NumPy reference (llama_reference.py) and lossytp. Checks the NumPy reference's reading of the HF
definitions (RoPE convention, GQA head order, SwiGLU halves, Conv1D layouts) with HF's code.

Needs torch >= 2 and transformers (bench/setup_torch_venv.sh):
  ~/.cache/lossytp/venv-torch/bin/python tests/reference/hf_crosscheck.py DIR [DIR...]
Configurations that none of these HF models expresses (e.g. SwiGLU with LayerNorm, GQA with
partial RoPE) are reported as skipped.

The lossytp parameters are leaves with requires_grad; the HF weights are built from them by
differentiable reshapes/slices (qkv -> q/k/v per query group, fc1 -> gate/up, Conv1D transposes,
embed[:V]) and passed to torch.func.functional_call, so autograd returns gradients in lossytp's
names and layouts directly (padded vocabulary rows get exactly zero).
HF computes RoPE's cos/sin and RMSNorm in float32 whatever the model dtype; the forwards of the
rotary module and of the RMSNorms are replaced by the same formulas in float64 (emb =
cat(freqs, freqs), HF LlamaRotaryEmbedding; w * x * rsqrt(mean(x^2) + eps), HF LlamaRMSNorm), so
the comparison with the float64 NumPy reference can be tight.
Exit 0 when every comparable configuration agrees (HF vs NumPy: 1e-9 relative; HF vs lossytp:
the tolerances of llama_reference.py), 1 otherwise.
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_reference as R  # noqa: E402

from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,  # noqa: E402
                          LlamaConfig, LlamaForCausalLM)

torch.set_default_dtype(torch.float64)
HF_VS_NUMPY_RTOL = 1e-9


def llama_weights(cfg, P):
    """HF LlamaForCausalLM state (names -> tensors) from lossytp leaves."""
    C, HD, NH, NKV, Fd, V = cfg.C, cfg.HD, cfg.NH, cfg.NKV, cfg.F, cfg.V
    rep = NH // NKV
    W = {"model.embed_tokens.weight": P["embed.weight"][:V], "model.norm.weight": P["lnf.weight"]}
    W["lm_head.weight"] = P["output_layer.weight"][:V] if cfg.untie else W["model.embed_tokens.weight"]
    for l in range(cfg.L):
        p, h = f"layer{l}.", f"model.layers.{l}."
        qkv = P[p + "attn.qkv.weight"].reshape(NKV, rep + 2, HD, C)  # Megatron: per group q.., k, v
        W[h + "self_attn.q_proj.weight"] = qkv[:, :rep].reshape(NH * HD, C)
        W[h + "self_attn.k_proj.weight"] = qkv[:, rep].reshape(NKV * HD, C)
        W[h + "self_attn.v_proj.weight"] = qkv[:, rep + 1].reshape(NKV * HD, C)
        W[h + "self_attn.o_proj.weight"] = P[p + "attn.proj.weight"]
        W[h + "mlp.gate_proj.weight"] = P[p + "mlp.fc1.weight"][:Fd]
        W[h + "mlp.up_proj.weight"] = P[p + "mlp.fc1.weight"][Fd:]
        W[h + "mlp.down_proj.weight"] = P[p + "mlp.fc2.weight"]
        W[h + "input_layernorm.weight"] = P[p + "ln1.weight"]
        W[h + "post_attention_layernorm.weight"] = P[p + "ln2.weight"]
    return W


def gpt2_weights(cfg, P):
    """HF GPT2LMHeadModel state from lossytp leaves (Conv1D weights are [in, out])."""
    C, HD, NH, V = cfg.C, cfg.HD, cfg.NH, cfg.V
    W = {"transformer.wte.weight": P["embed.weight"][:V], "transformer.wpe.weight": P["pos.weight"],
         "transformer.ln_f.weight": P["lnf.weight"], "transformer.ln_f.bias": P["lnf.bias"]}
    W["lm_head.weight"] = W["transformer.wte.weight"]
    for l in range(cfg.L):
        p, h = f"layer{l}.", f"transformer.h.{l}."
        # lossytp rows per head [q_h; k_h; v_h]; HF c_attn output columns [Q | K | V]
        qkv_w = P[p + "attn.qkv.weight"].reshape(NH, 3, HD, C).transpose(0, 1).reshape(3 * C, C)
        qkv_b = P[p + "attn.qkv.bias"].reshape(NH, 3, HD).transpose(0, 1).reshape(3 * C)
        W[h + "attn.c_attn.weight"] = qkv_w.T
        W[h + "attn.c_attn.bias"] = qkv_b
        W[h + "attn.c_proj.weight"] = P[p + "attn.proj.weight"].T
        W[h + "attn.c_proj.bias"] = P[p + "attn.proj.bias"]
        W[h + "mlp.c_fc.weight"] = P[p + "mlp.fc1.weight"].T
        W[h + "mlp.c_fc.bias"] = P[p + "mlp.fc1.bias"]
        W[h + "mlp.c_proj.weight"] = P[p + "mlp.fc2.weight"].T
        W[h + "mlp.c_proj.bias"] = P[p + "mlp.fc2.bias"]
        for a, b in (("ln1", "ln_1"), ("ln2", "ln_2")):
            W[h + b + ".weight"] = P[p + a + ".weight"]
            W[h + b + ".bias"] = P[p + a + ".bias"]
    return W


def neox_weights(cfg, P):
    """HF GPTNeoXForCausalLM state: its fused query_key_value is per head [q_h; k_h; v_h], as
    Megatron's for MHA."""
    V = cfg.V
    W = {"gpt_neox.embed_in.weight": P["embed.weight"][:V],
         "lm_head.weight": P["output_layer.weight"][:V],  # embed_out before transformers v5
         "gpt_neox.final_layer_norm.weight": P["lnf.weight"], "gpt_neox.final_layer_norm.bias": P["lnf.bias"]}
    for l in range(cfg.L):
        p, h = f"layer{l}.", f"gpt_neox.layers.{l}."
        for a, b in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm"),
                     ("attn.qkv", "attention.query_key_value"), ("attn.proj", "attention.dense"),
                     ("mlp.fc1", "mlp.dense_h_to_4h"), ("mlp.fc2", "mlp.dense_4h_to_h")):
            W[h + b + ".weight"] = P[p + a + ".weight"]
            W[h + b + ".bias"] = P[p + a + ".bias"]
    return W


def rope64(cfg):
    """HF's rotary cos/sin (emb = cat(freqs, freqs) over the rotary dims), in float64: HF
    computes them in float32 whatever the model dtype."""
    def forward(x, position_ids):
        inv = 1.0 / cfg.base ** (torch.arange(0, cfg.rot, 2, dtype=torch.float64) / cfg.rot)
        freqs = position_ids.to(torch.float64)[..., None] * inv
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    return forward


def build(cfg):
    """(HF model, weight mapper) or (None, reason). Attention through SDPA: HF's eager attention
    takes its softmax in float32, SDPA stays in float64 on the CPU."""
    rope = {"rope_type": "default", "rope_theta": cfg.base}
    if cfg.rope and cfg.rms and cfg.swiglu and not cfg.bias and cfg.rot == cfg.HD:
        hc = LlamaConfig(vocab_size=cfg.V, hidden_size=cfg.C, intermediate_size=cfg.F,
                         num_hidden_layers=cfg.L, num_attention_heads=cfg.NH,
                         num_key_value_heads=cfg.NKV, head_dim=cfg.HD,
                         max_position_embeddings=cfg.S, rms_norm_eps=cfg.eps, hidden_act="silu",
                         rope_parameters=rope, tie_word_embeddings=not cfg.untie,
                         attention_bias=False, mlp_bias=False)
        hc._attn_implementation = "sdpa"
        model = LlamaForCausalLM(hc).double().eval()
        model.model.rotary_emb.forward = rope64(cfg)

        # LlamaRMSNorm casts its input to float32 (HF keeps the norm in fp32 under bf16); the same
        # formula, y = w * x / sqrt(mean(x^2) + eps), without the cast:
        def rms64(mod):
            return lambda h: mod.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + mod.variance_epsilon))

        for mod in model.modules():
            if type(mod).__name__ == "LlamaRMSNorm":
                mod.forward = rms64(mod)
        return model, llama_weights
    if cfg.rope and not cfg.rms and not cfg.swiglu and cfg.bias and cfg.untie and cfg.NKV == cfg.NH:
        hc = GPTNeoXConfig(vocab_size=cfg.V, hidden_size=cfg.C, num_hidden_layers=cfg.L,
                           num_attention_heads=cfg.NH, intermediate_size=cfg.F, hidden_act="gelu_new",
                           max_position_embeddings=cfg.S, layer_norm_eps=cfg.eps,
                           tie_word_embeddings=False, use_parallel_residual=False, attention_bias=True,
                           rope_parameters=dict(rope, partial_rotary_factor=cfg.rot / cfg.HD))
        hc._attn_implementation = "sdpa"
        model = GPTNeoXForCausalLM(hc).double().eval()
        model.gpt_neox.rotary_emb.forward = rope64(cfg)
        return model, neox_weights
    if not cfg.rope and not cfg.rms and not cfg.swiglu and cfg.bias and not cfg.untie:
        hc = GPT2Config(vocab_size=cfg.V, n_positions=cfg.S, n_embd=cfg.C, n_layer=cfg.L,
                        n_head=cfg.NH, n_inner=cfg.F, activation_function="gelu_new",
                        layer_norm_epsilon=cfg.eps, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
        hc._attn_implementation = "sdpa"
        return GPT2LMHeadModel(hc).double().eval(), gpt2_weights
    return None, ("no HF model with these parts (Llama: RMSNorm + full RoPE + SwiGLU, no bias; "
                  "GPT-NeoX: LayerNorm + RoPE + GELU + bias, untied, MHA; GPT-2: LayerNorm + "
                  "learned positions + GELU + bias, tied)")


def check(d):
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    cfg = R.Cfg(meta["config"])
    model, mapper = build(cfg)
    if model is None:
        print(f"{d}: skipped ({mapper})")
        return 0
    B, T = meta["B"], meta["T"]
    x = np.array(meta["x"], dtype=np.int64).reshape(B, T)
    y = np.array(meta["y"], dtype=np.int64).reshape(B, T)
    P = R.read_safetensors(os.path.join(d, "params.safetensors"))
    Gl = R.read_safetensors(os.path.join(d, "grads.safetensors"))
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in P.items()}
    W = mapper(cfg, leaves)
    sd = set(model.state_dict().keys())
    if "embed_out.weight" in sd:  # GPT-NeoX before transformers v5
        W["embed_out.weight"] = W.pop("lm_head.weight")
    missing = [k for k in sd if k not in W and not k.endswith("rotary_emb.inv_freq")
               and not k.endswith("original_inv_freq") and not k.endswith(".attn.bias")
               and not k.endswith(".attn.masked_bias")]
    if missing:
        print(f"{d}: FAIL: HF tensors without a lossytp source: {missing}")
        return 1
    logits = torch.func.functional_call(model, W, (torch.tensor(x),), {"use_cache": False}).logits
    loss = F.cross_entropy(logits.reshape(-1, cfg.V), torch.tensor(y).reshape(-1))
    loss.backward()
    ref_loss, G = R.forward_backward(cfg, {k: v.copy() for k, v in P.items()}, x, y)
    fails = 0
    rel = abs(loss.item() - ref_loss) / abs(ref_loss)
    rel_l = abs(loss.item() - meta["loss"]) / abs(loss.item())
    ok = rel <= HF_VS_NUMPY_RTOL and rel_l <= R.LOSS_RTOL
    fails += not ok
    print(f"{d}: HF {type(model).__name__} loss {loss.item():.10f}; vs NumPy {rel:.1e}, "
          f"vs lossytp {rel_l:.1e} {'ok' if ok else 'FAIL'}")
    worst_np, worst_l = 0.0, 0.0
    for k, t in leaves.items():
        g = t.grad.numpy() if t.grad is not None else np.zeros_like(P[k])
        scale = float(np.max(np.abs(g))) or 1.0
        dn = float(np.max(np.abs(g - G[k]))) / scale
        dl = float(np.max(np.abs(g - Gl[k])))
        worst_np, worst_l = max(worst_np, dn), max(worst_l, dl / scale)
        bad = dn > HF_VS_NUMPY_RTOL or dl > R.GRAD_RTOL * scale + R.GRAD_ATOL
        if bad:
            print(f"  FAIL {k}: max|HF - NumPy| / max|HF| {dn:.2e}, max|HF - lossytp| / max|HF| {dl / scale:.2e}")
        fails += bad
    print(f"  gradients of {len(leaves)} tensors: worst max|HF - NumPy| / max|HF| {worst_np:.1e}, "
          f"worst max|HF - lossytp| / max|HF| {worst_l:.1e} {'ok' if not fails else 'FAIL'}")
    return 1 if fails else 0


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    return 1 if sum(check(d) for d in sys.argv[1:]) else 0


if __name__ == "__main__":
    sys.exit(main())
