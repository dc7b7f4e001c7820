#!/usr/bin/env bash
# --hf-checkpoint and `lossytp export` (docs/finetuning.md). Tiny GPT-2 and Llama models in Hugging
# Face format, written by tests/hf/hf_models.py (NumPy, no network): F32/F16/BF16 tensors, GPT-2
# keys with and without "transformer.", a sharded index, tied and untied heads, GQA, Llama 3's
# RoPE scaling. Each loads at
# TP = 1, 2 and 4 and gives the loss of the independent float64 reference forward (<= 1e-5
# relative); exported after import every tensor is identical; a TP=2 run trained, exported and
# re-imported at TP=1 gives its eval loss; bad folders and files are named before training with
# nothing written. Where bench/setup_torch_venv.sh's venv exists, transformers itself loads the
# exported folders and gives the same loss.
# usage: hf_checkpoint.sh path/to/lossytp workdir
set -eu
L=$1; W=$2
PY=/usr/bin/python3; [[ -x $PY ]] || PY=python3
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MK="$PY $HERE/hf/hf_models.py"
if ! $PY -c 'import numpy, h5py' 2>/dev/null; then echo "SKIPPED: $PY lacks numpy or h5py"; exit 77; fi
rm -rf "$W"; mkdir -p "$W"; cd "$W"
fail() { echo "FAIL: $*"; exit 1; }
eval_loss() { $PY -c "import h5py,sys; f=h5py.File(sys.argv[1],'r'); print(repr(float(f['eval/loss'][-1])))" "$1/metrics.h5"; }
close() {  # close A B [TOL]: |A - B| <= TOL |B|
  $PY -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); t=float(sys.argv[3]); sys.exit(0 if abs(a-b)<=t*abs(b) else 1)" "$1" "$2" "${3:-1e-5}"
}
evalonly() {  # evalonly MODEL_DIR OUT TP [extra flags]
  local d=$1 out=$2 tp=$3; shift 3
  "$L" train --hf-checkpoint "$d" --virtual-ranks "$tp" --tp "$tp" --train-iters 0 --eval-iters 1 \
    --micro-batch-size 1 --data "$d/train.bin" --data-format uint16 --eval-data "$d/eval_one.bin" \
    --threads 1 --quiet --out "$out" "$@"
}

$MK make gpt2 --arch gpt2 --seed 1 > /dev/null
$MK make gpt2_bf16 --arch gpt2 --dtype BF16 --no-prefix --untied --seed 2 > /dev/null
$MK make llama_gqa --arch llama --gqa 4 --shards 3 --seed 3 > /dev/null
$MK make llama_tied --arch llama --tied --dtype F16 --seed 4 > /dev/null
$MK make llama3_rope --arch llama --gqa 4 --rope-llama3 8 --seed 5 > /dev/null

for m in gpt2 gpt2_bf16 llama_gqa llama_tied llama3_rope; do
  ref=$($PY -c "import json; print(json.load(open('$m/reference.json'))['loss'])")
  for tp in 1 2 4; do
    evalonly "$m" "run_${m}_tp$tp" "$tp" --save-interval 1 || fail "$m: eval-only run at TP=$tp"
    got=$(eval_loss "run_${m}_tp$tp")
    close "$got" "$ref" || fail "$m at TP=$tp: loss $got, reference $ref"
  done
  echo "ok: $m loads at TP=1, 2, 4 with the reference loss $ref"
  # export after import: every tensor as it was
  "$L" export --load "run_${m}_tp2" --hf "export_$m" --quiet || fail "$m: export"
  $MK compare "$m" "export_$m" > /dev/null || { $MK compare "$m" "export_$m"; fail "$m: export differs from the import"; }
  echo "ok: $m exported from TP=2 is identical to the original"
done
# bf16 export of bf16 weights is exact too
"$L" export --load run_gpt2_bf16_tp4 --hf export_bf16 --dtype bf16 --quiet || fail "bf16 export"
$MK compare gpt2_bf16 export_bf16 > /dev/null || fail "bf16 export differs"
$PY - <<'PY' || fail "export metadata"
import json, struct
for d in ("export_gpt2", "export_bf16"):
    data = open(d + "/model.safetensors", "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    h = json.loads(data[8:8 + n])
    assert h["__metadata__"] == {"format": "pt"}, h.get("__metadata__")
    assert n % 8 == 0
    c = json.load(open(d + "/config.json"))
    assert c["vocab_size"] == 300 and c["architectures"] == ["GPT2LMHeadModel"], c
    assert all(v["dtype"] == ("BF16" if d == "export_bf16" else "F32") for k, v in h.items() if k != "__metadata__")
print("ok: exports carry __metadata__ {format: pt}, the true vocabulary, their dtype")
PY

# train at TP=2, export, re-import at TP=1: the same eval loss
for m in gpt2 llama_gqa; do
  "$L" train --hf-checkpoint $m --virtual-ranks 2 --tp 2 --train-iters 6 --eval-iters 1 --lr 3e-3 \
    --micro-batch-size 2 --data $m/train.bin --data-format uint16 --eval-data $m/eval_one.bin \
    --save-interval 6 --threads 1 --quiet --out "tuned_$m" || fail "$m: training at TP=2"
  "$L" export --load "tuned_$m" --hf "tuned_${m}_hf" --quiet || fail "$m: export of the trained run"
  evalonly "tuned_${m}_hf" "reimport_$m" 1 --data $m/train.bin --eval-data $m/eval_one.bin || fail "$m: re-import"
  a=$(eval_loss "tuned_$m"); b=$(eval_loss "reimport_$m"); r=$(eval_loss "run_${m}_tp1")
  close "$b" "$a" || fail "$m: TP=2 run's eval loss $a, re-imported at TP=1 $b"
  $PY -c "import sys; sys.exit(0 if abs(float('$a') - float('$r')) > 1e-3 else 1)" || fail "$m: training did not change the eval loss ($r -> $a)"
  echo "ok: $m trained at TP=2 ($r -> $a), exported and re-imported at TP=1: $b"
done

# transformers itself on the exported folders (optional)
VENV=${LOSSYTP_TORCH_VENV:-$HOME/.cache/lossytp/venv-torch}
if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c 'import transformers' 2>/dev/null; then
  for m in gpt2 llama_gqa llama_tied llama3_rope; do
    t=$("$VENV/bin/python" "$HERE/hf/transformers_loss.py" "export_$m" "$m/eval_one.bin" 2>/dev/null | tail -1)
    ref=$($PY -c "import json; print(json.load(open('$m/reference.json'))['loss'])")
    close "$t" "$ref" || fail "$m: transformers gives $t on the export, the reference $ref"
  done
  echo "ok: transformers loads the exports and gives the reference loss"
  # folders written by transformers' own save_pretrained: its key names, tied weights, biases
  for k in gpt2 llama_gqa_tied llama3_scaled smollm_bias; do
    "$VENV/bin/python" "$HERE/hf/transformers_models.py" "tf_$k" "$k" > /dev/null 2>&1 || fail "transformers_models.py $k"
    ref=$($PY -c "import json; print(json.load(open('tf_$k/reference.json'))['loss'])")
    evalonly "tf_$k" "run_tf_$k" 2 --save-interval 1 || fail "tf_$k: eval-only run at TP=2"
    got=$(eval_loss "run_tf_$k")
    close "$got" "$ref" || fail "tf_$k: loss $got, transformers $ref"
    "$L" export --load "run_tf_$k" --hf "export_tf_$k" --quiet || fail "tf_$k: export"
    $MK compare "tf_$k" "export_tf_$k" > /dev/null || fail "tf_$k: export differs"
  done
  echo "ok: models saved by transformers load at TP=2 with transformers' loss and export unchanged"
else
  echo "note: no venv with transformers at $VENV: the transformers cross-check is skipped"
fi

# bad input: one clear error before training, exit 2, nothing written
expect_error() {  # expect_error PATTERN MODEL_DIR [flags]
  local pat=$1 d=$2; shift 2
  rm -rf bad_out
  set +e
  evalonly "$d" bad_out 1 "$@" > bad.log 2>&1
  local rc=$?
  set -e
  [[ $rc -eq 2 ]] || { cat bad.log; fail "'$pat': exit $rc, not 2"; }
  grep -q -- "$pat" bad.log || { cat bad.log; fail "message lacks '$pat'"; }
  [[ ! -e bad_out ]] || fail "'$pat': bad_out was created"
}
mkdir -p noconfig && cp gpt2/model.safetensors gpt2/train.bin gpt2/eval_one.bin noconfig/
expect_error "config.json is missing" noconfig
cp -r gpt2 unknown && sed -i 's/GPT2LMHeadModel/BertForMaskedLM/' unknown/config.json
expect_error "architecture BertForMaskedLM is not supported" unknown
cp -r gpt2 badshape && $MK corrupt badshape shape
expect_error "has shape" badshape
cp -r gpt2 truncated && $MK corrupt truncated truncate
expect_error "truncated/model.safetensors" truncated
cp -r gpt2 offsets && $MK corrupt offsets offsets
expect_error "offsets/model.safetensors" offsets
cp -r llama_gqa missing_shard && rm missing_shard/model-00002-of-00003.safetensors
expect_error "model-00002-of-00003.safetensors" missing_shard
expect_error "hidden-size 128 contradicts" gpt2 --hidden-size 128
expect_error "drop --model" gpt2 --model gpt-tiny
echo "ok: bad folders and files are named before training, nothing written"
set +e
"$L" export --load run_gpt2_tp1 --hf export_gpt2 > bad.log 2>&1; rc=$?
set -e
[[ $rc -eq 2 ]] && grep -q "already holds a model" bad.log || { cat bad.log; fail "export over an existing model"; }
echo "ok: export refuses to overwrite a model without --overwrite"
