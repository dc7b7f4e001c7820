#!/usr/bin/env bash
# Graceful preemption (fault suite): a stop signal in the middle of a run makes every rank finish
# its iteration, write a checkpoint and metrics.h5 with status `interrupted`, and exit with
# status 4; `--load` then continues to exactly the losses of an uninterrupted run. The same for
# virtual ranks (one process), for mpirun (SIGTERM to one rank only, SIGUSR1 to mpirun), and for
# a grid, which records the interrupted runs in grid.json and resumes them when re-run.
# usage: preempt.sh path/to/lossytp workdir
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" "$@"
need_h5py

small=(--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --vocab-size 128
       --micro-batch-size 4 --train-iters 200 --log-interval 1 --eval-interval 50 --eval-iters 1
       --threads 1 --net ge:preset=one)


# check_interrupted DIR LOG: status, a checkpoint at the last iteration in metrics.h5
check_interrupted() {
  local d=$1 log=$2
  $PY - "$d" <<'PY' || { bad "$d: interrupted state"; cat "$log"; return 1; }
import h5py, sys
d = sys.argv[1]
f = h5py.File(d + "/metrics.h5", "r")
assert f.attrs["status"] == "interrupted", f.attrs["status"]
its = list(f["train/iteration"][:])
last = int(open(d + "/checkpoint/latest").read())
assert its == list(range(1, len(its) + 1)) and its[-1] == last and 0 < last < 200, (its[-1], last)
print("interrupted at iteration", last)
PY
  grep -q "interrupted by SIG[A-Z0-9]* after iteration" "$log" || { bad "$d: no interruption message"; return 1; }
  ok "$d: status interrupted, checkpoint at the last iteration"
}

# same_losses A B: train/loss and eval/loss identical bit for bit, status completed
same_losses() {
  $PY - "$1" "$2" <<'PY' && ok "$2 resumed = $1 bit for bit" || bad "$2 differs from $1"
import h5py, sys
a, b = (h5py.File(p + "/metrics.h5", "r") for p in sys.argv[1:3])
assert b.attrs["status"] == "completed", b.attrs["status"]
for k in ["train/iteration", "train/loss", "train/grad_norm", "eval/loss"]:
    x, y = a[k][:], b[k][:]
    assert x.shape == y.shape and x.tobytes() == y.tobytes(), (k, x.shape, y.shape)
PY
}

# ---- virtual ranks: SIGTERM to the process ------------------------------------------------
"$L" train "${small[@]}" --virtual-ranks 2 --tp 2 --out v_ref --quiet || bad "virtual reference run"
"$L" train "${small[@]}" --virtual-ranks 2 --tp 2 --out v > v.log 2>&1 & pid=$!
wait_line v.log "iter +20/" || bad "virtual: no progress line"
kill -TERM $pid; wait $pid; rc=$?
[[ $rc -eq 4 ]] && ok "virtual: SIGTERM -> exit status 4" || { bad "virtual: exit status $rc"; cat v.log; }
check_interrupted v v.log
"$L" train "${small[@]}" --virtual-ranks 2 --tp 2 --out v --load v > v2.log 2>&1 || { bad "virtual: resume"; cat v2.log; }
grep -q "resumed from the checkpoint of iteration" v2.log || bad "virtual: no resume line"
same_losses v_ref v

# ---- mpirun: SIGTERM to one rank only (the ranks agree), then SIGUSR1 to mpirun ----------------
mpi=("$MPIRUN" --oversubscribe --bind-to none -np 2)
"${mpi[@]}" "$L" train "${small[@]}" --tp 2 --out m_ref --quiet || bad "mpi reference run"
"${mpi[@]}" "$L" train "${small[@]}" --tp 2 --out m > m.log 2>&1 & pid=$!
wait_line m.log "iter +20/" || bad "mpi: no progress line"
rank=$(pgrep -P $pid -f "lossytp train" | tail -1)
if [[ -z "$rank" ]]; then bad "mpi: no rank process under mpirun"; kill -TERM $pid; fi
kill -TERM $rank; wait $pid; rc=$?
[[ $rc -eq 4 ]] && ok "mpi: SIGTERM to one rank -> exit status 4" || { bad "mpi: exit status $rc"; cat m.log; }
check_interrupted m m.log
first=$(cat m/checkpoint/latest)
"${mpi[@]}" "$L" train "${small[@]}" --tp 2 --out m --load m > m2.log 2>&1 & pid=$!
wait_line m2.log "iter +$((first + 20))/" || bad "mpi resume: no progress line"
kill -USR1 $pid; wait $pid; rc=$?
[[ $rc -eq 4 ]] && ok "mpi: SIGUSR1 to mpirun -> exit status 4" || { bad "mpi: exit status $rc after SIGUSR1"; cat m2.log; }
check_interrupted m m2.log
[[ $(cat m/checkpoint/latest) -gt $first ]] || bad "mpi: the second interruption is not later than the first"
"${mpi[@]}" "$L" train "${small[@]}" --tp 2 --out m --load m --quiet || bad "mpi: final resume"
same_losses m_ref m

# ---- a grid: SIGTERM interrupts the running runs, the re-run resumes them -----------------------
cat > g.toml <<'TOML'
[base]
num-layers = 2
hidden-size = 64
num-attention-heads = 4
seq-length = 32
vocab-size = 128
micro-batch-size = 4
train-iters = 200
log-interval = 1
eval-interval = 50
eval-iters = 1
threads = 1
net = "ge:preset=one"
[sweep]
seed = [1, 2, 3]
TOML
"$L" grid g.toml --out g_ref --virtual-ranks 2 > g_ref.log 2>&1 || { bad "grid reference"; cat g_ref.log; }
"$L" grid g.toml --out g --virtual-ranks 2 --verbose > g.log 2>&1 & pid=$!
wait_line g.log "seed=2\] iter +20/" || bad "grid: no progress line"
kill -TERM $pid; wait $pid; rc=$?
[[ $rc -eq 4 ]] && ok "grid: SIGTERM -> exit status 4" || { bad "grid: exit status $rc"; cat g.log; }
grep -q "grid interrupted by SIGTERM" g.log || bad "grid: no interruption summary"
$PY - <<'PY' && ok "grid.json: 2 interrupted with checkpoints, 1 pending" || { bad "grid.json after the signal"; cat g/grid.json; }
import json
runs = {r["id"]: r for r in json.load(open("g/grid.json"))["runs"]}
st = {k: r["status"] for k, r in runs.items()}
assert st == {"seed=1": "interrupted", "seed=2": "interrupted", "seed=3": "pending"}, st
for k in ["seed=1", "seed=2"]:
    assert int(open("g/%s/checkpoint/latest" % k).read()) > 0
PY
"$L" grid g.toml --out g --virtual-ranks 2 > g2.log 2>&1 || { bad "grid: re-run"; cat g2.log; }
[[ $(grep -c "resumed from iteration" g2.log) -eq 2 ]] && ok "grid: the re-run resumed both" || { bad "grid: resume lines"; cat g2.log; }
for s in 1 2 3; do same_losses "g_ref/seed=$s" "g/seed=$s"; done
# the same under mpirun: two runs side by side on 2 ranks, SIGUSR1 to mpirun
"${mpi[@]}" "$L" grid g.toml --out gm --verbose > gm.log 2>&1 & pid=$!
wait_line gm.log "seed=2\] iter +20/" || bad "mpi grid: no progress line"
kill -USR1 $pid; wait $pid; rc=$?
[[ $rc -eq 4 ]] && ok "mpi grid: SIGUSR1 -> exit status 4" || { bad "mpi grid: exit status $rc"; cat gm.log; }
grep -q '"interrupted"' gm/grid.json || bad "mpi grid: grid.json has no interrupted run"
"${mpi[@]}" "$L" grid g.toml --out gm > gm2.log 2>&1 || { bad "mpi grid: re-run"; cat gm2.log; }
for s in 1 2 3; do same_losses "g_ref/seed=$s" "gm/seed=$s"; done

echo "preempt: $passes passed, $fails failed"
[[ $fails -eq 0 ]]
