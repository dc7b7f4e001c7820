#!/usr/bin/env python3
"""Small random models written by transformers' own save_pretrained (its current file layout,
key names and tied-weight handling), with transformers' loss on one token sequence. Optional part
of tests/cli/hf_checkpoint.sh, run only where bench/setup_torch_venv.sh's venv exists.
  transformers_models.py DIR KIND    KIND: gpt2 | llama_gqa_tied | llama3_scaled | smollm_bias
  writes DIR (config.json, model.safetensors), DIR/eval_one.bin, DIR/train.bin (raw uint16) and
  DIR/reference.json {"loss": transformers' mean cross-entropy of eval_one.bin}"""
import json
import os
import sys

import numpy as np
import torch
import transformers as tf

d, kind = sys.argv[1], sys.argv[2]
torch.manual_seed(7)
V, T = 320, 48
if kind == "gpt2":
    cfg = tf.GPT2Config(vocab_size=V, n_positions=T, n_embd=96, n_layer=2, n_head=4)
    model = tf.GPT2LMHeadModel(cfg)
else:
    kw = dict(vocab_size=V, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
              num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=T, rms_norm_eps=1e-5,
              rope_theta=20000.0, tie_word_embeddings=kind == "llama_gqa_tied")
    if kind == "llama3_scaled":
        kw["rope_scaling"] = {"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 96}
    if kind == "smollm_bias":
        kw.update(attention_bias=True, mlp_bias=True, num_key_value_heads=8)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**kw))
with torch.no_grad():  # non-trivial norms and biases
    for n, p in model.named_parameters():
        if n.endswith("bias") or "norm" in n or "ln_" in n:
            p.add_(0.1 * torch.randn_like(p))
model.save_pretrained(d, safe_serialization=True)
rng = np.random.default_rng(3)
seq = rng.integers(0, V, T + 1).astype(np.uint16)
seq.tofile(os.path.join(d, "eval_one.bin"))
rng.integers(0, V, 4000).astype(np.uint16).tofile(os.path.join(d, "train.bin"))
model.eval()
x = torch.tensor(seq.astype(np.int64))[None]
with torch.no_grad():
    logits = model(x[:, :-1]).logits.double()
loss = torch.nn.functional.cross_entropy(logits[0], x[0, 1:]).item()
json.dump({"loss": loss}, open(os.path.join(d, "reference.json"), "w"))
print(f"{d}: {kind}, transformers loss {loss:.8f}")
