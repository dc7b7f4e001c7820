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
check_traffic() {  # check_traffic NAME args...: --dry-run's bytes per site == the run's metrics.h5
  local name=$1; shift
  "$L" train "${small[@]}" "$@" --dry-run --json > plan.json
  "$L" train "${small[@]}" "$@" --out "run-$name" > /dev/null
  "$PY" - "run-$name/metrics.h5" <<'PY' || fail "dry-run traffic vs metrics.h5 ($name)"
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
}
check_traffic exact --net exact
check_traffic caat --net caat:p=0.5
# --sequence-parallel: all-gathers and reduce-scatters (Llama: reduce-scattered embedding; GPT-2
# blocks: learned positions, biases)
check_traffic sp --sequence-parallel
check_traffic sp-gpt --sequence-parallel --model gpt-tiny
check_traffic sp-bf16 --sequence-parallel --bf16
"$PY" - <<'PY' || fail "sequence-parallel sites"
import json
plan = json.load(open("plan.json"))["comm_bytes_per_iteration"]
for s in ("layer0.attn.qkv.fwd", "layer0.attn.qkv.regather.bwd", "head.regather.bwd", "embed.bwd", "replicated.grad"):
    assert s in plan, s
print("ok: sequence-parallel sites in the plan")
PY
# --use-distributed-optimizer (TP=2 x DP=2): a reduce-scatter at dp.grad and an all-gather at
# dp.param; the optimizer estimate is one DP shard; the TOML key works as the flag
check_traffic zero --use-distributed-optimizer
printf 'model = "llama-tiny"\nuse-distributed-optimizer = true\n' > zero.toml
"$L" train --config zero.toml --virtual-ranks 2 --dry-run --json > zero.json
"$L" train --model llama-tiny --virtual-ranks 2 --dry-run --json > plain.json
"$PY" - <<'PY' || fail "distributed optimizer plan"
import json
plan = json.load(open("plan.json"))["comm_bytes_per_iteration"]
assert "dp.grad" in plan and "dp.param" in plan and plan["dp.grad"] == plan["dp.param"], plan
z, p = json.load(open("zero.json")), json.load(open("plain.json"))
assert z["config"]["use-distributed-optimizer"] is True and "use-distributed-optimizer" not in p["config"]
ratio = z["memory_per_rank"]["optimizer"] / p["memory_per_rank"]["optimizer"]
assert 0.49 < ratio <= 0.51, ratio
print("ok: distributed optimizer: dp.grad + dp.param, optimizer memory / 2, TOML key")
PY
echo "dry run: all passed"
