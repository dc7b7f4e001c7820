#!/usr/bin/env bash
# Pipeline parallelism (issue 13) as users run it: real MPI processes and virtual ranks.
#  - PP=2, PP=4, TP=2 x PP=2, DP=2 x PP=2 and the interleaved schedule reproduce PP=1 over 20
#    iterations (train loss, gradient norm, eval loss within 1e-5), GPT-2 and Llama blocks;
#  - a lossy network on the pipeline's links (scope=pp) loses packets there, counted under
#    /comm/pp.*, and the run stays finite;
#  - a PP=2 run resumed from its checkpoint is bit-identical to the uninterrupted one;
#  - the simulated step time and bubble are logged;
#  - bad layouts fail before training with one clear error.
# usage: pipeline.sh path/to/lossytp workdir
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" "$@"
need_h5py
gpt=(--num-layers 4 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --vocab-size 64
     --micro-batch-size 2 --global-batch-size 16 --train-iters 20 --eval-interval 10 --eval-iters 2
     --lr 0.003 --threads 1 --quiet)
llama=(--model llama-tiny --num-layers 4 --hidden-size 32 --num-attention-heads 4 --num-query-groups 2
       --ffn-hidden-size 64 --seq-length 16 --vocab-size 64 --micro-batch-size 2 --global-batch-size 16
       --train-iters 20 --eval-interval 10 --eval-iters 2 --lr 0.003 --threads 1 --quiet)

check() {  # check NAME REF RUN
  if d=$(same_metrics "$2" "$3" 2>&1); then ok "$1 reproduces PP=1 (largest relative difference $d)"; else bad "$1: $d"; fi
}

"$L" train "${gpt[@]}" --out gpt-pp1 || bad "gpt PP=1 run"
mpi -np 2 "$L" train "${gpt[@]}" --pp 2 --save-interval 20 --out gpt-pp2 && check "gpt PP=2 (2 MPI ranks)" gpt-pp1 gpt-pp2 || bad "gpt PP=2 run"
mpi -np 4 "$L" train "${gpt[@]}" --pp 4 --out gpt-pp4 && check "gpt PP=4 (4 MPI ranks)" gpt-pp1 gpt-pp4 || bad "gpt PP=4 run"
mpi -np 4 "$L" train "${gpt[@]}" --tp 2 --pp 2 --out gpt-tp2pp2 && check "gpt TP=2 x PP=2" gpt-pp1 gpt-tp2pp2 || bad "gpt TP2xPP2 run"
"$L" train "${gpt[@]}" --pp 2 --dp 2 --virtual-ranks 4 --out gpt-dp2pp2 && check "gpt DP=2 x PP=2 (virtual ranks)" gpt-pp1 gpt-dp2pp2 || bad "gpt DP2xPP2 run"
"$L" train "${gpt[@]}" --pp 2 --num-layers-per-virtual-pipeline-stage 1 --virtual-ranks 2 --out gpt-vpp \
  && check "gpt interleaved PP=2 x 2 chunks" gpt-pp2 gpt-vpp || bad "gpt interleaved run"

"$L" train "${llama[@]}" --out llama-pp1 || bad "llama PP=1 run"
mpi -np 2 "$L" train "${llama[@]}" --pp 2 --out llama-pp2 && check "llama PP=2" llama-pp1 llama-pp2 || bad "llama PP=2 run"
mpi -np 4 "$L" train "${llama[@]}" --tp 2 --pp 2 --sequence-parallel --out llama-tp2pp2 \
  && check "llama TP=2 x PP=2, sequence parallel" llama-pp1 llama-tp2pp2 || bad "llama TP2xPP2 run"
"$L" train "${llama[@]}" --pp 2 --num-layers-per-virtual-pipeline-stage 1 --virtual-ranks 2 --out llama-vpp \
  && check "llama interleaved PP=2 x 2 chunks" llama-pp2 llama-vpp || bad "llama interleaved run"

# Timeline columns: PP=2 with 8 micro-batches has a bubble near (P-1)/(m+P-1) = 1/9.
if "$PY" - gpt-pp2 <<'PY'
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1] + "/metrics.h5", "r")
s, b = f["train/sim_step_s"][:], f["train/pipeline_bubble"][:]
assert len(s) == 20 and np.all(s > 0), s
assert len(b) == 20 and np.all((b > 0) & (b < 0.6)), b
print(f"sim step {np.median(s)*1e3:.1f} ms, bubble {np.median(b):.3f} (1F1B formula 0.111)")
PY
then ok "simulated step time and bubble logged"; else bad "timeline columns"; fi

# Lossy pipeline links: packets lost on pp.* (rank 0 receives pp.bwd), finite losses.
mpi -np 2 "$L" train "${gpt[@]}" --pp 2 --net "drop:rate=0.02,scope=pp" --out lossy || bad "lossy PP=2 run"
if "$PY" - lossy <<'PY'
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1] + "/metrics.h5", "r")
lost = int(f["comm/pp.bwd/packets_lost"][:].sum())
sent = int(f["comm/pp.fwd/messages"][:].sum())
assert lost > 0, "no packet lost on pp.bwd"
assert sent == 20 * 8, sent  # one activation per micro-batch per iteration from stage 0
assert np.all(np.isfinite(f["train/loss"][:]))
assert f.attrs["packets_lost"] > 0 and 0 < f.attrs["observed_loss_rate"] < 0.1
assert "tp.fwd" not in "".join(f["comm"].keys())
print(f"{lost} packets lost on pp.bwd, observed loss rate {f.attrs['observed_loss_rate']:.4f}")
PY
then ok "scope=pp loses packets on the pipeline links"; else bad "lossy pipeline"; fi

# Resume: checkpoints at 10 and 20; resuming from 10 gives iterations 11..20 bit-identically.
mpi -np 2 "$L" train "${gpt[@]}" --pp 2 --net "drop:rate=0.02,scope=pp" --save-interval 10 --keep-checkpoints 0 \
  --out full || bad "PP=2 run with checkpoints"
ls full/checkpoint/ | grep -q "rank1-it10" || bad "no checkpoint of rank 1 (stage 1)"
cp -r full part && echo 10 > part/checkpoint/latest && rm part/metrics.h5
mpi -np 2 "$L" train "${gpt[@]}" --pp 2 --net "drop:rate=0.02,scope=pp" --load part --out resumed || bad "resume"
if "$PY" - full resumed <<'PY'
import sys, h5py, numpy as np
a, b = (h5py.File(p + "/metrics.h5", "r") for p in sys.argv[1:3])
assert list(b["train/iteration"][:]) == list(range(11, 21))
for k in ("train/loss", "train/grad_norm"):
    assert np.array_equal(a[k][10:], b[k][:]), (k, a[k][10:], b[k][:])
assert np.array_equal(a["comm/pp.bwd/packets_lost"][10:], b["comm/pp.bwd/packets_lost"][:])
PY
then ok "PP=2 resume is bit-identical (lossy links included)"; else bad "resume differs"; fi

# Export gathers the stages: the exported model, imported at PP=1, has the PP=2 run's eval loss.
if "$L" export --load gpt-pp2 --hf exported > /dev/null \
   && "$L" train --hf-checkpoint exported --seq-length 16 --vocab-size 64 --micro-batch-size 2 --global-batch-size 16 \
        --train-iters 0 --eval-iters 2 --threads 1 --quiet --out reimported \
   && "$PY" -c "
import h5py
a, b = h5py.File('gpt-pp2/metrics.h5', 'r'), h5py.File('reimported/metrics.h5', 'r')
assert abs(a['eval/loss'][-1] - b['eval/loss'][0]) < 1e-5 * a['eval/loss'][-1], (a['eval/loss'][-1], b['eval/loss'][0])
"; then ok "export of a PP=2 run re-imports with its eval loss"; else bad "export across stages"; fi

# A grid sweeping the pipeline size, on virtual ranks: both runs complete, the PP=2 run has pp.* traffic.
cat > grid.toml <<'TOML'
[base]
num-layers = 4
hidden-size = 32
num-attention-heads = 4
seq-length = 16
vocab-size = 64
micro-batch-size = 2
global-batch-size = 8
train-iters = 10
eval-interval = 10
threads = 1

[sweep]
pipeline-model-parallel-size = [1, 2]
TOML
if "$L" grid grid.toml --virtual-ranks 2 --out grid > grid.log 2>&1 && [[ $(grep -c '"status": "completed"' grid/grid.json) -eq 2 ]] \
   && ls grid/pp=2/metrics.h5 > /dev/null 2>&1 \
   && "$PY" -c "import h5py, glob; f = h5py.File('grid/pp=2/metrics.h5'); assert f['comm/pp.fwd/messages'][:].sum() == 10 * 4"
then ok "grid sweeps pipeline-model-parallel-size"; else bad "grid over pp: $(tail -5 grid.log)"; fi

# Bad layouts: one clear error, before training.
expect_error() {  # expect_error RANKS MESSAGE ARGS...
  local n=$1 msg=$2; shift 2
  out=$("$L" train "${gpt[@]}" --virtual-ranks "$n" --out bad "$@" 2>&1); rc=$?
  if [[ $rc -ne 0 ]] && grep -qF -- "$msg" <<<"$out" && [[ ! -e bad/metrics.h5 ]]; then ok "error: $msg"
  else bad "expected '$msg' (rc=$rc): $out"; fi
}
expect_error 3 "--num-layers 4 is not divisible by --pipeline-model-parallel-size 3" --pp 3
expect_error 2 "--num-layers-per-virtual-pipeline-stage 3 does not divide the 2 layers" --pp 2 --num-layers-per-virtual-pipeline-stage 3
expect_error 2 "is not divisible by --tensor-model-parallel-size 1 x --pipeline-model-parallel-size 4" --pp 4
expect_error 4 "multiple of" --pp 4 --num-layers 8 --num-layers-per-virtual-pipeline-stage 1 --global-batch-size 6
expect_error 2 "--recompute-granularity full is not supported with pipeline parallelism" --pp 2 --recompute-granularity full --recompute-method uniform

echo "$passes passed, $fails failed"
[[ $fails -eq 0 ]]
