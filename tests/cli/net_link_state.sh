#!/usr/bin/env bash
# Link state (ge ...,state=link) end to end at TP=2: each link's Gilbert-Elliott chain runs on
# across messages and iterations and is saved in the checkpoints (version-3 files with a
# "netlinks" section), so a run stopped at iteration 4 (it evaluates there, the uninterrupted run
# does not: evaluation must leave the chains alone) and resumed reproduces the uninterrupted run
# bit for bit, under mpirun and on virtual ranks, and mpirun equals virtual ranks. An unknown
# state= is one clear error; `lossytp net sample` prints state=message and state=link.
# usage: net_link_state.sh path/to/lossytp workdir
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" "$@"
need_h5py
small=(--num-layers 1 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --vocab-size 64
       --micro-batch-size 2 --tp 2 --log-interval 1 --eval-interval 3 --eval-iters 1 --quiet --threads 1)

# same_train A B: train/iteration, loss and grad_norm identical bit for bit; eval/loss too at the
# iterations both evaluated
same_train() {
  "$PY" - "$1" "$2" <<'PY'
import sys, h5py, numpy as np
a, b = (h5py.File(p + "/metrics.h5", "r") for p in sys.argv[1:3])
for k in ("train/iteration", "train/loss", "train/grad_norm"):
    x, y = a[k][:], b[k][:]
    assert x.shape == y.shape == (8,) and x.tobytes() == y.tobytes(), (k, x, y)
ea, eb = dict(zip(a["eval/iteration"][:], a["eval/loss"][:])), dict(zip(b["eval/iteration"][:], b["eval/loss"][:]))
common = sorted(set(ea) & set(eb))
assert len(common) >= 3 and all(ea[i] == eb[i] for i in common), (ea, eb)
PY
}

# Chains with long sojourns (p = r: two copies of a chain that differ never meet again), so that a
# chain not saved, or moved by the evaluation, shows in the losses (checked by breaking each:
# every way is caught by at least one spec, the first catches both).
specs=("ge:p=0.01,r=0.01,h=0.5,state=link,packet=64"
       "ge:p=0.1,r=0.1,h=0.5,step=message,state=link,packet=64,fill=rescale"
       "ge:p=0.01,r=0.01,h=0.5,state=link,packet=64,mode=endpoint,encode=hadamard")
for spec in "${specs[@]}"; do
  tag=${spec//[^a-z0-9]/_}
  mpi -np 2 "$L" train "${small[@]}" --net "$spec" --train-iters 8 --out "m_whole_$tag" || bad "$spec: mpirun run"
  mpi -np 2 "$L" train "${small[@]}" --net "$spec" --train-iters 4 --save-interval 4 --out "m_$tag" || bad "$spec: mpirun to 4"
  mpi -np 2 "$L" train "${small[@]}" --net "$spec" --train-iters 8 --load "m_$tag" --out "m_$tag" || bad "$spec: mpirun resume"
  "$L" train "${small[@]}" --net "$spec" --virtual-ranks 2 --train-iters 8 --out "v_whole_$tag" || bad "$spec: virtual run"
  "$L" train "${small[@]}" --net "$spec" --virtual-ranks 2 --train-iters 4 --save-interval 4 --out "v_$tag" || bad "$spec: virtual to 4"
  "$L" train "${small[@]}" --net "$spec" --virtual-ranks 2 --train-iters 8 --load "v_$tag" --out "v_$tag" || bad "$spec: virtual resume"
  magic=$(head -c 8 "m_$tag/checkpoint/rank1-it4.bin")
  [[ $magic == LTPCKPT3 ]] && ok "$spec: checkpoint with the link states ($magic)" || bad "$spec: checkpoint magic $magic"
  same_train "m_whole_$tag" "m_$tag" && ok "$spec: mpirun resumed = uninterrupted, bit for bit" || bad "$spec: mpirun resume differs"
  same_train "v_whole_$tag" "v_$tag" && ok "$spec: virtual resumed = uninterrupted, bit for bit" || bad "$spec: virtual resume differs"
  same_train "m_whole_$tag" "v_whole_$tag" && ok "$spec: mpirun = virtual ranks, bit for bit" || bad "$spec: mpirun and virtual ranks differ"
done

# the option is live: state=message trains differently; its checkpoints stay version 2
mpi -np 2 "$L" train "${small[@]}" --net ge:p=0.01,r=0.01,h=0.5,packet=64 --train-iters 8 --save-interval 8 --out m_msg ||
  bad "state=message run"
"$PY" - <<'PY' && ok "state=link and state=message differ" || bad "state=link changes nothing"
import h5py
a = h5py.File("m_msg/metrics.h5", "r")["train/loss"][:]
b = h5py.File("m_whole_ge_p_0_01_r_0_01_h_0_5_state_link_packet_64/metrics.h5", "r")["train/loss"][:]
assert a.tobytes() != b.tobytes()
PY
[[ $(head -c 8 m_msg/checkpoint/rank0-it8.bin) == LTPCKPT2 ]] && ok "state=message: version-2 checkpoint" || bad "state=message checkpoint"

# bad input: one clear error naming the value, before training
out=$(mpi -np 2 "$L" train "${small[@]}" --train-iters 2 --net ge:preset=one,state=sticky --out bad 2>&1); rc=$?
if [[ $rc -eq 2 ]] && [[ $(grep -c "lossytp: error:" <<<"$out") -eq 1 ]] &&
   grep -qF -- "--net: ge: state=sticky is not one of message, link" <<<"$out" && ! grep -q "^iter" <<<"$out"; then
  ok "unknown state rejected"; else echo "$out"; bad "unknown state: rc $rc"; fi

# net sample: both states against theory
out=$("$L" net sample --net ge:preset=one --packets 2000000 --message-packets 100)
echo "$out"
if grep -q "^state=message:" <<<"$out" && grep -q "^state=link:" <<<"$out" &&
   grep -q "ge:p=0.01,r=0.19,k=1,h=0,state=link" <<<"$out" &&
   [[ $(grep -c "mean burst length" <<<"$out") -eq 2 ]]; then ok "net sample prints both states"; else bad "net sample output"; fi
"$L" net sample --net ge:preset=one,state=link --packets 2000000 --message-packets 100 --json > s.json
"$PY" - <<'PY' && ok "net sample json: state=link follows the per-packet theory" || bad "net sample json"
import json
s = json.load(open("s.json"))
o = s["other_states"][0]
assert s["state"] == "link" and o["state"] == "message", s
assert abs(s["theoretical_mean_burst_length"] - 1 / 0.19) < 1e-9, s
assert o["theoretical_mean_burst_length"] < 0.97 * s["theoretical_mean_burst_length"], o
for x in (s, o):
    assert abs(x["mean_burst_length"] / x["theoretical_mean_burst_length"] - 1) < 0.03, x
PY
echo "net link state: $passes passed, $fails failed"
[[ $fails -eq 0 ]]
