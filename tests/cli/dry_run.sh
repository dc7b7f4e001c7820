#!/usr/bin/env bash
# --dry-run: the published parameter counts, a TOML config of Llama keys with the preset's
# booleans switched off, and traffic estimates that equal what a real run counts in metrics.h5's
# /comm/ (per site, bytes of the first iteration), for exact and CAAT networks.
# usage: dry_run.sh path/to/lossytp workdir
set -eu
L=$1; W=$2
PY=/usr/bin/python3; [[ -x $PY ]] || PY=python3
rm -rf "$W"; mkdir -p "$W"; cd "$W"
fail() { echo "FAIL: $*"; exit 1; }

"$L" train --model tinyllama-1.1b --dry-run --json > tinyllama.json
"$L" train --model gpt2-large --dry-run --json > gpt2large.json
"$PY" - <<'PY' || fail "parameter counts"
import json
t = json.load(open("tinyllama.json")); g = json.load(open("gpt2large.json"))
assert t["parameters"] == 1100048384, t["parameters"]
assert g["parameters"] == 774030080, g["parameters"]
assert g["padded_vocab_size"] == 50304 and g["vocab_size"] == 50257
for j in (t, g):
    assert set(["parameters_per_rank", "memory_bytes_per_rank", "comm_bytes_per_iteration"]) <= set(j)
print("ok: tinyllama-1.1b 1,100,048,384 and gpt2-large 774,030,080 parameters")
PY
"$L" train --model gpt2-large --dry-run | grep -q "memory per rank" || fail "text report"

# TOML keys are the flags' names; false switches a preset's flag off.
cat > gpt_like.toml <<'TOML'
model = "llama-tiny"
swiglu = false
untie-embeddings-and-output-weights = false
normalization = "LayerNorm"
position-embedding-type = "learned_absolute"
TOML
"$L" train --config gpt_like.toml --dry-run --json > gpt_like.json
"$PY" - <<'PY' || fail "TOML overrides of a preset"
import json
c = json.load(open("gpt_like.json"))["config"]
assert c["swiglu"] is False and c["untie-embeddings-and-output-weights"] is False, c
assert c["normalization"] == "LayerNorm" and c["disable-bias-linear"] is True and c["ffn-hidden-size"] == 704
print("ok: TOML keys override the preset, false included")
PY

small=(--model llama-tiny --num-layers 2 --seq-length 32 --micro-batch-size 2 --global-batch-size 8
       --train-iters 1 --eval-interval 0 --eval-iters 0 --quiet --virtual-ranks 4 --tp 2)
for net in exact caat:p=0.5; do
  "$L" train "${small[@]}" --net "$net" --dry-run --json > plan.json
  "$L" train "${small[@]}" --net "$net" --out "run-${net%%:*}" > /dev/null
  "$PY" - "run-${net%%:*}/metrics.h5" <<'PY' || fail "dry-run traffic vs metrics.h5 ($net)"
import json, sys, h5py
plan = json.load(open("plan.json"))["comm_bytes_per_iteration"]
with h5py.File(sys.argv[1], "r") as f:
    seen = {s: float(f["comm"][s]["bytes"][0]) for s in f["comm"] if isinstance(f["comm"][s], h5py.Group)}
seen = {s: b for s, b in seen.items() if b > 0}
assert set(plan) == set(seen), (sorted(set(plan) ^ set(seen)))
bad = {s: (plan[s], seen[s]) for s in plan if plan[s] != seen[s]}
assert not bad, bad
print(f"ok: {len(plan)} sites, dry-run bytes == metrics.h5 bytes")
PY
done
echo "dry run: all passed"
