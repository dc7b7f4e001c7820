#!/usr/bin/env bash
# Context parallelism (issue 14) as users run it: real MPI processes and virtual ranks.
#  - CP=2 and CP=4 reproduce CP=1 over 20 iterations for each --cp-comm-type (p2p, all_gather,
#    a2a), and TP=2 x CP=2 too (llama-tiny shape with GQA; train loss, gradient norm, eval loss
#    within 1e-5); GPT-2 blocks (learned positions); CP with PP and with DP;
#  - a lossy network on the CP messages (scope=cp) loses packets there and stays finite;
#  - bad input fails before training with one clear error.
# usage: context_parallel.sh path/to/lossytp workdir
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" "$@"
need_h5py
common=(--seq-length 32 --vocab-size 64 --micro-batch-size 2 --global-batch-size 8 --train-iters 20
        --eval-interval 10 --eval-iters 2 --lr 0.003 --threads 1 --quiet)
llama=(--model llama-tiny --num-layers 2 --hidden-size 64 --num-attention-heads 8 --num-query-groups 4
       --ffn-hidden-size 128 "${common[@]}")
gpt=(--num-layers 2 --hidden-size 32 --num-attention-heads 4 "${common[@]}")

check() {  # check NAME REF RUN
  if d=$(same_metrics "$2" "$3" 2>&1); then ok "$1 reproduces CP=1 (largest relative difference $d)"; else bad "$1: $d"; fi
}

"$L" train "${llama[@]}" --out llama-cp1 || bad "llama CP=1 run"
for t in p2p all_gather a2a; do
  mpi -np 2 "$L" train "${llama[@]}" --cp 2 --cp-comm-type $t --out llama-cp2-$t \
    && check "llama CP=2 $t (2 MPI ranks)" llama-cp1 llama-cp2-$t || bad "llama CP=2 $t run"
  "$L" train "${llama[@]}" --cp 4 --cp-comm-type $t --virtual-ranks 4 --out llama-cp4-$t \
    && check "llama CP=4 $t (virtual ranks)" llama-cp1 llama-cp4-$t || bad "llama CP=4 $t run"
done
mpi -np 4 "$L" train "${llama[@]}" --tp 2 --cp 2 --out llama-tp2cp2 \
  && check "llama TP=2 x CP=2 p2p" llama-cp1 llama-tp2cp2 || bad "llama TP2xCP2 run"
"$L" train "${llama[@]}" --tp 2 --cp 2 --cp-comm-type a2a --virtual-ranks 4 --out llama-tp2cp2-a2a \
  && check "llama TP=2 x CP=2 a2a" llama-cp1 llama-tp2cp2-a2a || bad "llama TP2xCP2 a2a run"
"$L" train "${llama[@]}" --cp 2 --pp 2 --num-layers 4 --virtual-ranks 4 --out llama-cp2pp2 \
  && "$L" train "${llama[@]}" --num-layers 4 --out llama4-cp1 \
  && check "llama CP=2 x PP=2" llama4-cp1 llama-cp2pp2 || bad "llama CP2xPP2 run"
"$L" train "${llama[@]}" --cp 2 --dp 2 --use-distributed-optimizer --global-batch-size 8 --virtual-ranks 4 \
  --out llama-cp2dp2 && check "llama CP=2 x DP=2, distributed optimizer" llama-cp1 llama-cp2dp2 || bad "llama CP2xDP2 run"

"$L" train "${gpt[@]}" --out gpt-cp1 || bad "gpt CP=1 run"
mpi -np 2 "$L" train "${gpt[@]}" --cp 2 --out gpt-cp2 && check "gpt CP=2 p2p (learned positions)" gpt-cp1 gpt-cp2 \
  || bad "gpt CP=2 run"

# Lossy CP messages: packets lost on the cp sites, finite losses; the default scope loses none there.
for t in p2p all_gather a2a; do
  mpi -np 2 "$L" train "${llama[@]}" --cp 2 --cp-comm-type $t --net "drop:rate=0.02,scope=cp" --out lossy-$t \
    || bad "lossy CP=2 $t run"
  if "$PY" - lossy-$t <<'PY'
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1] + "/metrics.h5", "r")
sites = [k for k in f["comm"].keys() if k != "iteration"]
cp_sites = [s for s in sites if ".kv." in s or ".dkv." in s or ".a2a." in s]
assert cp_sites, sites
lost = sum(int(f[f"comm/{s}/packets_lost"][:].sum()) for s in cp_sites)
assert lost > 0, "no packet lost on the cp sites"
assert np.all(np.isfinite(f["train/loss"][:]))
print(f"{lost} packets lost on {len(cp_sites)} cp sites, e.g. {cp_sites[0]}")
PY
  then ok "scope=cp loses packets on the $t messages"; else bad "lossy $t"; fi
done

expect_error() {  # expect_error RANKS MESSAGE ARGS...
  local n=$1 msg=$2; shift 2
  out=$("$L" train "${llama[@]}" --virtual-ranks "$n" --out bad "$@" 2>&1); rc=$?
  if [[ $rc -ne 0 ]] && grep -qF -- "$msg" <<<"$out" && [[ ! -e bad/metrics.h5 ]]; then ok "error: $msg"
  else bad "expected '$msg' (rc=$rc): $out"; fi
}
expect_error 4 "--seq-length 36 is not divisible by 2 x --context-parallel-size 4" --cp 4 --seq-length 36
expect_error 4 "must be divisible by --context-parallel-size 4" --cp 4 --cp-comm-type a2a --num-attention-heads 4 --num-query-groups 2 --hidden-size 32
expect_error 2 "--cp-comm-type" --cp 2 --cp-comm-type ring
expect_error 2 "works with softmax attention only" --cp 2 --attention semigroup
expect_error 3 "is not divisible by --tensor-model-parallel-size 1 x --context-parallel-size 2" --cp 2

echo "$passes passed, $fails failed"
[[ $fails -eq 0 ]]
