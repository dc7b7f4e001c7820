#!/usr/bin/env bash
# kill -9 of one rank mid-collective in a grid under mpirun (fault suite). Open MPI aborts the
# whole job when a process dies, so the grid cannot go on in the same job; what must hold is that
# it stops in bounded time with a non-zero status, leaves grid.json and every completed run's
# metrics.h5 intact, the killed run's metrics.h5 readable (status `running`, its rows up to the
# last flush, a checkpoint), and that re-running the same command resumes the killed run from its
# checkpoint and finishes the pending ones without retraining (or touching) the completed run.
# (--virtual-ranks runs every rank as a thread of one process: it cannot lose a single rank.)
# usage: grid_rank_kill.sh path/to/lossytp workdir
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" "$@"
need_h5py

# Runs of tp = 2 on 2 ranks: one run at a time, every iteration a collective between the two.
cat > g.toml <<'TOML'
[base]
num-layers = 2
hidden-size = 64
num-attention-heads = 4
seq-length = 32
vocab-size = 128
micro-batch-size = 4
train-iters = 120
log-interval = 1
save-interval = 10
threads = 1
tensor-model-parallel-size = 2
net = "ge:preset=one"
comm-timeout = 10
[sweep]
seed = [1, 2, 3]
TOML
mpi=("$MPIRUN" --oversubscribe --bind-to none -np 2)

"${mpi[@]}" "$L" grid g.toml --out g --verbose > g.log 2>&1 & pid=$!
wait_line g.log "seed=2\] iter +25/" || bad "no progress line of the second run"
# rank 1 of the job (the non-leader of the run): a child of mpirun with OMPI_COMM_WORLD_RANK=1
victim=""; ranks=$(pgrep -P $pid)
for p in $ranks; do
  tr '\0' '\n' < /proc/$p/environ 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1" && victim=$p
done
if [[ -z "$victim" ]]; then bad "no rank-1 process under mpirun"; kill -TERM $pid; fi
start=$SECONDS
kill -KILL $victim
# mpirun must end on its own (Open MPI aborts the job), well before any timeout of ours
for _ in $(seq 600); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
if kill -0 $pid 2>/dev/null; then bad "mpirun still running 60 s after the kill"; kill -KILL $pid; fi
wait $pid; rc=$?; took=$((SECONDS - start))
[[ $rc -ne 0 ]] && ok "mpirun exits with status $rc after the kill" || { bad "mpirun exit status 0"; cat g.log; }
[[ $took -lt 30 ]] && ok "the job ended ${took}s after the kill" || bad "the job took ${took}s to end"
# no rank outlives the job (a zombie waiting for its reaper counts as gone; 10 s to exit)
alive() { local p; for p in $ranks; do
  [[ -e /proc/$p && "$(awk '{print $3}' /proc/$p/stat 2>/dev/null)" != Z ]] && echo $p; done; }
for _ in $(seq 100); do [[ -z "$(alive)" ]] && break; sleep 0.1; done
[[ -z "$(alive)" ]] && ok "no rank process outlived the job" || bad "rank processes $(alive) outlived mpirun"

$PY - <<'PY' && ok "after the kill: grid.json, seed=1 completed, seed=2 running with rows and a checkpoint" || { bad "state after the kill"; cat g.log; cat g/grid.json; }
import json, h5py
st = {r["id"]: r["status"] for r in json.load(open("g/grid.json"))["runs"]}
assert st == {"seed=1": "completed", "seed=2": "running", "seed=3": "pending"}, st
f = h5py.File("g/seed=1/metrics.h5", "r")
assert f.attrs["status"] == "completed" and list(f["train/iteration"][:]) == list(range(1, 121))
f = h5py.File("g/seed=2/metrics.h5", "r")  # the killed run: complete up to its last flush
assert f.attrs["status"] == "running", f.attrs["status"]
its = list(f["train/iteration"][:])
assert len(its) >= 25 and its == list(range(1, len(its) + 1)), its
assert len(f["train/loss"]) == len(its)
ck = int(open("g/seed=2/checkpoint/latest").read())
assert 10 <= ck <= its[-1], (ck, its[-1])
print("killed run: %d rows, checkpoint of iteration %d" % (len(its), ck))
PY
sum1=$(sha256sum g/seed=1/metrics.h5 g/seed=1/checkpoint/* | sha256sum)

# The same command again: seed=1 kept as it is, seed=2 resumed, seed=3 trained.
timeout 300 "${mpi[@]}" "$L" grid g.toml --out g > g2.log 2>&1; rc=$?
[[ $rc -eq 0 ]] && ok "re-run: exit status 0" || { bad "re-run: exit status $rc"; cat g2.log; }
grep -q "3 runs in g.toml, 2 to do (1 finished before)" g2.log && ok "re-run: 2 to do, 1 finished before" || { bad "re-run: the count"; cat g2.log; }
grep -q "seed=2: completed.*resumed from iteration" g2.log && ok "re-run: seed=2 resumed from its checkpoint" || { bad "re-run: no resume of seed=2"; cat g2.log; }
[[ "$(sha256sum g/seed=1/metrics.h5 g/seed=1/checkpoint/* | sha256sum)" == "$sum1" ]] && ok "re-run: the completed run's files untouched" || bad "re-run: seed=1 was modified"
$PY - <<'PY' && ok "re-run: every run completed with all its rows" || { bad "after the re-run"; cat g/grid.json; }
import json, h5py
st = {r["id"]: r["status"] for r in json.load(open("g/grid.json"))["runs"]}
assert st == {"seed=1": "completed", "seed=2": "completed", "seed=3": "completed"}, st
for s in (1, 2, 3):
    f = h5py.File("g/seed=%d/metrics.h5" % s, "r")
    assert f.attrs["status"] == "completed"
    assert list(f["train/iteration"][:]) == list(range(1, 121)), s
PY

echo "grid rank kill: $passes passed, $fails failed"
[[ $fails -eq 0 ]]
