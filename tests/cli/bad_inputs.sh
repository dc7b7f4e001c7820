#!/usr/bin/env bash
# Bad input stops lossytp before training with exit status 2 and exactly one clear message,
# from every rank count, without an MPI abort or a core dump, and without touching results.
# usage: bad_inputs.sh path/to/lossytp workdir
set -u
L=$1; W=$2
MPIRUN=${MPIRUN:-mpirun}
rm -rf "$W"; mkdir -p "$W"; cd "$W"
fails=0; passes=0

# Each case is its own mpirun launch (~2 s, mostly waiting): up to 3 run at once, in the
# background; settle waits for them and prints their results in order. Checks that depend on
# a case's effects on disk call settle first.
cases=0
expect_error() {  # expect_error NP "expected text" args...
  local np=$1 want=$2; shift 2
  cases=$((cases+1))
  local res=.case$(printf %03d $cases)  # in $W, where this script runs
  while (( $(jobs -rp | wc -l) >= 3 )); do wait -n; done
  (
    out=$("$MPIRUN" --oversubscribe --bind-to none -np "$np" "$L" "$@" 2>&1); rc=$?
    nerr=$(grep -c "lossytp: error:" <<<"$out")
    if [[ $rc -ne 2 ]] || ! grep -qF -- "$want" <<<"$out" || [[ $nerr -ne 1 ]] ||
       grep -qiE "core dumped|MPI_ABORT|segmentation" <<<"$out"; then
      { echo "FAIL: np=$np $* -> rc=$rc, $nerr error lines, expected '$want'"; echo "$out" | sed 's/^/    /'; } > "$res.fail"
    else
      echo "ok: np=$np $* -> $(grep "lossytp: error:" <<<"$out")" > "$res.ok"
    fi
  ) &
}
settle() {
  wait
  local f
  for f in .case*; do
    [[ -e $f ]] || continue
    cat "$f"
    if [[ $f == *.ok ]]; then passes=$((passes+1)); else fails=$((fails+1)); fi
    rm -f "$f"
  done
}

small=(--num-layers 1 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --vocab-size 64 --micro-batch-size 2 --train-iters 2 --quiet)

expect_error 1 "--bogus" train --bogus 1
expect_error 1 "A subcommand is required"
expect_error 3 "world size 3 (mpirun -np or --virtual-ranks) is not divisible by --tensor-model-parallel-size 2" train --tp 2 "${small[@]}"
expect_error 4 "= 6 ranks, but the world has 4" train --tp 2 --dp 3 "${small[@]}"
expect_error 2 "--num-attention-heads 3 is not divisible by --tensor-model-parallel-size 2" train --tp 2 "${small[@]}" --hidden-size 48 --num-attention-heads 3
# Llama family (layer specs): one clear error before training
llama=(--model llama-tiny --num-layers 1 --seq-length 16 --micro-batch-size 2 --train-iters 2 --quiet)
expect_error 1 "--num-query-groups 3 does not divide --num-attention-heads 8" train "${llama[@]}" --num-query-groups 3
expect_error 8 "--num-query-groups 4 is not divisible by --tensor-model-parallel-size 8" train --tp 8 "${llama[@]}"
expect_error 1 "--rotary-percent must be in (0, 1]" train "${llama[@]}" --rotary-percent 1.5
expect_error 1 "--rotary-percent must be in (0, 1]" train "${llama[@]}" --rotary-percent 0
expect_error 1 "gives a rotary dimension of 3 channels" train "${llama[@]}" --rotary-percent 0.1
expect_error 1 "--normalization must be LayerNorm or RMSNorm, got 'BatchNorm'" train "${llama[@]}" --normalization BatchNorm
expect_error 1 "--position-embedding-type must be learned_absolute or rope" train "${llama[@]}" --position-embedding-type alibi
expect_error 4 "--ffn-hidden-size 702 (the SwiGLU width) is not divisible by --tensor-model-parallel-size 4" train --tp 4 "${llama[@]}" --ffn-hidden-size 702
expect_error 1 "unknown --attention 'linear'" train "${llama[@]}" --attention linear
# a run larger than the machine stops before training, with both numbers, creating nothing
expect_error 1 "but only" train --model llama-1b --micro-batch-size 256 --train-iters 1 --quiet --out toobig
settle
[[ -e toobig ]] && { echo "FAIL: toobig/ was created"; fails=$((fails+1)); }
cat > toobig.toml <<'TOML'
[base]
model = "llama-1b"
micro-batch-size = 256
train-iters = 1
[sweep]
seed = [1, 2]
TOML
expect_error 1 "but only" grid toobig.toml --out toobig-grid
settle
[[ -e toobig-grid ]] && { echo "FAIL: toobig-grid/ was created"; fails=$((fails+1)); }
expect_error 1 "--make-vocab-size-divisible-by must be > 0" train "${llama[@]}" --make-vocab-size-divisible-by 0
expect_error 1 "--hidden-size 30 is not divisible by --num-attention-heads 4" train "${small[@]}" --hidden-size 30
expect_error 1 "--lr must be > 0" train "${small[@]}" --lr -1
expect_error 1 "--train-iters must be >= 0" train "${small[@]}" --train-iters -1
expect_error 2 "--global-batch-size 3 is not a multiple" train --dp 2 "${small[@]}" --global-batch-size 3
expect_error 1 "--adam-beta2 must be in [0, 1)" train "${small[@]}" --adam-beta2 1.5
expect_error 1 "unknown --model preset 'gpt-huge'" train --model gpt-huge
expect_error 1 "--data-format must be auto, text, uint16, llmc or megatron" train "${small[@]}" --data-format csv
expect_error 2 "--device must be cpu or cuda, got 'tpu'" train --tp 2 "${small[@]}" --device tpu
# --device cuda where no GPU can be used: refused before training, saying why
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  expect_error 2 "--device cuda: " train --tp 2 "${small[@]}" --device cuda
fi
expect_error 2 "data file $W/missing.txt: does not exist" train "${small[@]}" --data "$W/missing.txt"
printf 'abc' > odd.bin
expect_error 1 "--eval-data odd.bin needs --data" train "${small[@]}" --eval-data odd.bin
expect_error 2 "odd.bin" train "${small[@]}" --data odd.bin
python3 - <<'PY'
import struct
with open("badver.bin", "wb") as f:
    f.write(struct.pack("<256i", 20240520, 7, 4, *([0] * 253)) + b"\0" * 8)
with open("short.txt", "w") as f:
    f.write("tiny")
with open("big.bin", "wb") as f:  # tokens up to 999 > vocab 64
    f.write(struct.pack("<1000H", *range(1000)))
PY
expect_error 1 "badver.bin" train "${small[@]}" --data badver.bin
expect_error 1 "fewer than" train "${small[@]}" --data short.txt --vocab-size 256
expect_error 1 "has tokens up to 999 but --vocab-size is 64" train "${small[@]}" --data big.bin
printf 'lr = 0.001\nnot-a-flag = 3\n' > badkey.toml
expect_error 2 "badkey.toml: unknown key 'not-a-flag'" train --config badkey.toml
printf 'lr = = 3\n' > syntax.toml
expect_error 1 "syntax.toml:1" train --config syntax.toml
expect_error 1 "--config: cannot read 'nope.toml'" train --config nope.toml

# Network model specs: the message quotes the offending token.
expect_error 2 "unknown model 'gee'" train --tp 2 "${small[@]}" --net gee:p=0.1
expect_error 1 "rate=1.5" train "${small[@]}" --net drop:rate=1.5
expect_error 1 "unknown key 'q'" train "${small[@]}" --net ge:p=0.1,r=0.2,q=1
expect_error 1 "unknown preset" train "${small[@]}" --net ge:preset=nope
expect_error 1 "p=0" train "${small[@]}" --net ge:p=0,r=0
expect_error 1 "packet" train "${small[@]}" --net drop:rate=0.1,packet=0
expect_error 1 "malformed" train "${small[@]}" --net ge:p
expect_error 1 "ge: state=sticky is not one of message, link" train "${small[@]}" --net ge:preset=one,state=sticky
expect_error 1 "unknown model 'gee'" net sample --net gee

# --sequence-parallel: not with CAAT-Net; the micro-batch's tokens must split evenly over TP
expect_error 2 "--sequence-parallel does not combine with CAAT-Net" train --tp 2 "${small[@]}" --sequence-parallel --net caat:p=0.5
expect_error 2 "--sequence-parallel splits the 15 tokens of a micro-batch" train --tp 2 "${small[@]}" --sequence-parallel --seq-length 15 --micro-batch-size 1

# activation recompute (Megatron's checks): unknown values, full without a method, a layer count
# beyond the model, a method or count without full
expect_error 1 "--recompute-granularity must be full or selective, got 'some'" train "${small[@]}" --recompute-granularity some
expect_error 1 "--recompute-granularity full needs --recompute-method" train "${small[@]}" --recompute-granularity full
expect_error 1 "--recompute-method must be uniform or block" train "${small[@]}" --recompute-granularity full --recompute-method both
expect_error 1 "--recompute-num-layers must be between 1 and --num-layers 1, got 2" train "${small[@]}" --recompute-granularity full --recompute-method block --recompute-num-layers 2
expect_error 1 "--recompute-method uniform applies to --recompute-granularity full only" train "${small[@]}" --recompute-granularity selective --recompute-method uniform

# Resuming: a folder without a checkpoint, or a checkpoint of another model, is refused up front.
expect_error 1 "no checkpoint there" train "${small[@]}" --load nock --out nock2
settle
[[ ! -e nock2 ]] || { echo "FAIL: a refused run created its folder"; fails=$((fails+1)); }
"$L" train "${small[@]}" --save-interval 1 --out ck > /dev/null 2>&1 || { echo "FAIL: checkpointing run"; fails=$((fails+1)); }
expect_error 1 "the checkpoint has num-layers = 1, this run 2" train "${small[@]}" --num-layers 2 --load ck --out ck

# An existing run is never overwritten by accident.
settle
mkdir -p keep && printf 'precious' > keep/metrics.h5
expect_error 2 "already exists" train "${small[@]}" --out keep
settle
[[ $(cat keep/metrics.h5) == precious ]] || { echo "FAIL: keep/metrics.h5 was modified"; fails=$((fails+1)); }

settle
echo "bad inputs: $passes passed, $fails failed"
[[ $fails -eq 0 ]]
