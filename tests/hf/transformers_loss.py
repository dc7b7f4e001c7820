#!/usr/bin/env python3
"""Loss of a Hugging Face model folder on one token sequence, computed by transformers itself
(AutoModelForCausalLM.from_pretrained, fp32, eager attention). Optional cross-check of
tests/cli/hf_checkpoint.sh, run only where bench/setup_torch_venv.sh's venv exists.
  transformers_loss.py DIR TOKENS.bin     (raw uint16; the first n_positions + 1 tokens)"""
import json
import os
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM

d, tokens = sys.argv[1], sys.argv[2]
cfg = json.load(open(os.path.join(d, "config.json")))
T = cfg.get("n_positions", cfg.get("max_position_embeddings"))
seq = torch.tensor(np.fromfile(tokens, dtype=np.uint16)[:T + 1].astype(np.int64))[None]
model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager")
model.eval()
with torch.no_grad():
    logits = model(seq[:, :-1]).logits.double()
loss = torch.nn.functional.cross_entropy(logits[0], seq[0, 1:])
print(f"{loss.item():.10f}")
