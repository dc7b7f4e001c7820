#!/usr/bin/env bash
# Failures and heterogeneity end to end at TP=2 under mpirun: a link outage (down:from=2,to=3)
# loses every in-scope packet of iterations 2-3 and nothing else; under transport=reliable it
# costs only time (losses identical to the exact run); links= puts a model on one direction of the
# ring; transport=bounded retransmits until its deadline and loses the rest. metrics.h5 is rank
# 0's view: in the ring rank 0 receives over the link 1-0.
# usage: net_failures.sh path/to/lossytp workdir
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" "$@"
need_h5py
small=(--num-layers 1 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --vocab-size 64
       --micro-batch-size 2 --train-iters 5 --log-interval 1 --tp 2 --quiet --threads 1)
run() {  # run NAME SPEC
  local out
  out=$(mpi -np 2 "$L" train "${small[@]}" --net "$2" --out "$1" 2>&1) || { echo "$out"; bad "$1: training failed"; return 1; }
  [[ -f "$1/metrics.h5" ]] || bad "$1: no metrics.h5"
}
run exact exact
run down "down:from=2,to=3"
run down_rel "down:from=2,to=3,transport=reliable"
run link10 "drop:rate=0.2,links=1-0"
run link01 "drop:rate=0.2,links=0-1"
run lossy "drop:rate=0.2,packet=64"
run bounded "drop:rate=0.2,packet=64,transport=bounded,deadline=1.5e-4"

"$PY" - <<'PY' && ok "metrics of down, links= and bounded" || bad "metrics check"
import h5py, numpy as np
def load(run):
    f = h5py.File(run + "/metrics.h5", "r")
    sites = [k for k in f["comm"].keys() if isinstance(f["comm"][k], h5py.Group)]
    col = lambda name: sum(np.asarray(f["comm"][s][name][:], dtype=float) for s in sites)
    loss = f["train/loss"][:]
    assert len(loss) == 5 and np.all(np.isfinite(loss)), (run, loss)
    return {k: col(k) for k in ("packets_exposed", "packets_lost", "retransmissions", "sim_seconds")}, loss
ex, ex_loss = load("exact")
d, d_loss = load("down")
print("down: exposed", d["packets_exposed"], "lost", d["packets_lost"])
assert np.all(d["packets_exposed"] > 0)
assert np.array_equal(d["packets_lost"][1:3], d["packets_exposed"][1:3]), "iterations 2-3 lose every packet"
assert d["packets_lost"][0] == 0 and np.all(d["packets_lost"][3:] == 0), "nothing lost outside the window"
assert d_loss[0] == ex_loss[0] and not np.array_equal(d_loss, ex_loss), (d_loss, ex_loss)
r, r_loss = load("down_rel")
print("down reliable: retransmissions", r["retransmissions"], "sim_seconds", r["sim_seconds"])
assert np.all(r["packets_lost"] == 0)
assert np.array_equal(r_loss, ex_loss), "reliable: exact data"
assert np.all(r["retransmissions"][1:3] > 0) and r["retransmissions"][0] == 0
assert np.all(r["sim_seconds"][1:3] > r["sim_seconds"][0] * 2)
a, a_loss = load("link10")
b, b_loss = load("link01")
print("links=1-0 lost", a["packets_lost"], "links=0-1 lost", b["packets_lost"])
assert a["packets_lost"].sum() > 0, "rank 0 receives over 1-0"
assert np.all(b["packets_lost"] == 0), "0-1 is rank 1's incoming link only"
assert not np.array_equal(b_loss, ex_loss), "rank 1's losses still change the run"
l, _ = load("lossy")
bd, _ = load("bounded")
print("lossy lost", l["packets_lost"], "bounded lost", bd["packets_lost"], "retransmissions", bd["retransmissions"])
assert bd["packets_lost"].sum() < 0.5 * l["packets_lost"].sum() and bd["packets_lost"].sum() > 0
assert bd["retransmissions"].sum() > 0
assert bd["sim_seconds"].sum() > l["sim_seconds"].sum()
PY

# a link naming a rank outside the group of 2: a clear error before training
out=$(mpi -np 2 "$L" train "${small[@]}" --net "drop:rate=0.1,links=0-2" --out badlink 2>&1); rc=$?
if [[ $rc -eq 2 ]] && [[ $(grep -c "lossytp: error:" <<<"$out") -eq 1 ]] && grep -qF "link '0-2' (links=0-2) names rank 2, outside the 2 ranks of group 'tp'" <<<"$out" &&
   ! grep -q "^iter" <<<"$out"; then ok "out-of-group link rejected (rc $rc)"; else echo "$out"; bad "out-of-group link: rc $rc"; fi
for spec in "down:from=3,to=2" "drop:rate=0.1,transport=fast" "drop:rate=0.1,transport=bounded"; do
  out=$(mpi -np 2 "$L" train "${small[@]}" --net "$spec" --out bad 2>&1); rc=$?
  if [[ $rc -eq 2 ]] && grep -q "lossytp: error: .*--net" <<<"$out"; then ok "$spec rejected"; else echo "$out"; bad "$spec: rc $rc"; fi
done
echo "net failures: $passes passed, $fails failed"
[[ $fails -eq 0 ]]
