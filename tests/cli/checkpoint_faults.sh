#!/usr/bin/env bash
# Fault injection on checkpoints (label "fault"): a byte flipped in the middle of a rank's file is
# named before training and resume falls back to the newest intact checkpoint, bit-identically;
# with no intact checkpoint the run stops with exit 2, naming the files, and nothing is modified;
# a disk that fills up while a checkpoint is written (injected ENOSPC) fails the run with a clear
# error, the previous checkpoint intact and resumable. --keep-checkpoints N retention.
# usage: checkpoint_faults.sh path/to/lossytp workdir
set -u
L=$1; W=$2
MPIRUN=${MPIRUN:-mpirun}
PY=/usr/bin/python3; [[ -x $PY ]] || PY=python3
rm -rf "$W"; mkdir -p "$W"; cd "$W"
fails=0
fail() { echo "FAIL: $*"; fails=$((fails+1)); }
ok() { echo "ok: $*"; }
mpi() { "$MPIRUN" --oversubscribe --bind-to none -np 2 "$L" "$@"; }

small=(--num-layers 1 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --vocab-size 64
       --micro-batch-size 2 --tp 2 --save-interval 2)
flip() {  # flip a byte in the middle of a file
  "$PY" -c "import sys; p=sys.argv[1]; b=bytearray(open(p,'rb').read()); b[len(b)//2]^=0x10; open(p,'wb').write(b)" "$1"
}
its() { ls "$1/checkpoint" | sed -n 's/^rank0-it\([0-9]*\)\.bin$/\1/p' | sort -n | tr '\n' ' '; }
# same_loss A B [FIRST]: train/loss of run B equals A's (rows FIRST.. of A when B holds only those)
same_loss() {
  "$PY" - "$1/metrics.h5" "$2/metrics.h5" <<'PY'
import sys, h5py
a = h5py.File(sys.argv[1], "r")["train/loss"][:]
b = h5py.File(sys.argv[2], "r")["train/loss"][:]
assert len(a) == len(b) and (a == b).all(), (list(a), list(b))
PY
}

# Retention: the newest N complete checkpoints (default 2; 0 keeps all).
mpi train "${small[@]}" --train-iters 10 --quiet --out whole > /dev/null 2>&1 || fail "reference run"
[[ "$(its whole)" == "8 10 " ]] && ok "default keeps 2: $(its whole)" || fail "default retention: $(its whole)"
"$L" train "${small[@]}" --virtual-ranks 2 --train-iters 6 --keep-checkpoints 0 --quiet --out all > /dev/null 2>&1
[[ "$(its all)" == "2 4 6 " ]] && ok "--keep-checkpoints 0 keeps all" || fail "keep 0: $(its all)"
"$L" train "${small[@]}" --virtual-ranks 2 --train-iters 6 --keep-checkpoints 1 --quiet --out one > /dev/null 2>&1
[[ "$(its one)" == "6 " ]] && ok "--keep-checkpoints 1 keeps the latest" || fail "keep 1: $(its one)"

# A flipped byte in the latest checkpoint: named, and resume falls back to the one before.
mpi train "${small[@]}" --train-iters 6 --quiet --out run > /dev/null 2>&1 || fail "run to 6"
flip run/checkpoint/rank1-it6.bin
out=$(mpi train "${small[@]}" --train-iters 10 --out run --load run 2>&1); rc=$?
if [[ $rc -eq 0 ]] && grep -q "lossytp: warning: .*rank1-it6.bin is corrupt" <<<"$out" &&
   grep -q "resuming from the checkpoint of iteration 4, the newest intact one" <<<"$out"; then
  ok "corrupt latest: $(grep 'lossytp: warning' <<<"$out")"
else
  fail "corrupt latest -> rc=$rc"; echo "$out" | sed 's/^/    /'
fi
same_loss whole run && ok "fallback resume is bit-identical to the uninterrupted run" || fail "fallback resume differs"

# Nothing intact (latest truncated, the other flipped): exit 2 before training, naming both
# files, one error line, nothing modified.
truncate -s 1000 run/checkpoint/rank0-it10.bin
flip run/checkpoint/rank1-it8.bin
before=$(md5sum run/metrics.h5 run/checkpoint/*)
out=$(mpi train "${small[@]}" --train-iters 12 --out run --load run 2>&1); rc=$?
if [[ $rc -eq 2 ]] && [[ $(grep -c "lossytp: error:" <<<"$out") -eq 1 ]] &&
   grep -q "no intact checkpoint" <<<"$out" && grep -q "rank0-it10.bin is truncated" <<<"$out" &&
   grep -q "rank1-it8.bin is corrupt" <<<"$out" && ! grep -qiE "MPI_ABORT|core dumped" <<<"$out"; then
  ok "no intact checkpoint: $(grep 'lossytp: error' <<<"$out")"
else
  fail "no intact checkpoint -> rc=$rc"; echo "$out" | sed 's/^/    /'
fi
[[ "$before" == "$(md5sum run/metrics.h5 run/checkpoint/*)" ]] && ok "nothing modified" || fail "files changed"

# The disk fills up halfway through the second checkpoint of each rank (injected ENOSPC).
"$L" train "${small[@]}" --virtual-ranks 2 --train-iters 10 --quiet --out vwhole > /dev/null 2>&1 || fail "virtual reference run"
size=$(stat -c %s vwhole/checkpoint/rank0-it10.bin)
out=$(LOSSYTP_DEBUG_ENOSPC_AFTER=$((size * 3 / 2)) "$L" train "${small[@]}" --virtual-ranks 2 --train-iters 10 --quiet --out full 2>&1); rc=$?
if [[ $rc -ne 0 ]] && grep -q "No space left on device" <<<"$out" &&
   grep -q "the previous one (iteration 2) is intact" <<<"$out"; then
  ok "ENOSPC: $(grep -m1 'No space' <<<"$out")"
else
  fail "ENOSPC -> rc=$rc"; echo "$out" | sed 's/^/    /'
fi
[[ $(cat full/checkpoint/latest) == 2 ]] || fail "latest moved: $(cat full/checkpoint/latest)"
ls full/checkpoint | grep -q '\.tmp$' && fail "a temporary file was left: $(ls full/checkpoint)"
"$PY" -c "import h5py,sys; a=h5py.File('full/metrics.h5','r').attrs; assert a['status']=='failed' and 'No space left' in a['error'], dict(a)" \
  && ok "metrics.h5 says failed, with the error" || fail "metrics.h5 of the ENOSPC run"
out=$("$L" train "${small[@]}" --virtual-ranks 2 --train-iters 10 --out full --load full 2>&1); rc=$?
[[ $rc -eq 0 ]] && grep -q "resumed from the checkpoint of iteration 2" <<<"$out" &&
  ok "the previous checkpoint resumes" || { fail "resume after ENOSPC -> rc=$rc"; echo "$out" | sed 's/^/    /'; }
same_loss vwhole full && ok "resume after ENOSPC is bit-identical" || fail "resume after ENOSPC differs"

echo "checkpoint faults: $fails failed"
[[ $fails -eq 0 ]]
