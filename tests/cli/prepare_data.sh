#!/usr/bin/env bash
# scripts/prepare_data.py with its built-in byte tokenizer (no Hugging Face libraries needed):
# llm.c, Megatron and nanoGPT outputs checked byte by byte against the formats, --sft tokens +
# loss mask, --eval-task lines; lossytp trains on each (--data, --data-path, --loss-mask);
# bad data stops lossytp before training (exit 2, one message, nothing written).
# usage: prepare_data.sh path/to/lossytp workdir
set -u
L=$1; W=$2
MPIRUN=${MPIRUN:-mpirun}
PREP=$(cd "$(dirname "$0")/../.." && pwd)/scripts/prepare_data.py
PY=/usr/bin/python3; [[ -x $PY ]] || PY=python3
command -v "$PY" >/dev/null || { echo "SKIPPED: no python3"; exit 77; }
rm -rf "$W"; mkdir -p "$W"; cd "$W"
fails=0
fail() { echo "FAIL: $*"; fails=$((fails+1)); }
ok() { echo "ok: $*"; }

"$PY" "$PREP" --help > help.txt || fail "--help"
for w in --sft --eval-task --tokenizer bytes megatron 20240801; do
  grep -q -- "$w" help.txt || fail "--help does not mention $w"
done

"$PY" - <<'PY'
import json, random
random.seed(5)
words = "the of and to in is was he that it for with as his on be at by had are".split()
docs = [" ".join(random.choice(words) for _ in range(random.randint(5, 400))) for _ in range(60)]
with open("docs.jsonl", "w") as f:
    for i, d in enumerate(docs):
        f.write(json.dumps({"id": i, "body": d}) + "\n")
    f.write(json.dumps({"id": 99, "body": ""}) + "\n")  # empty: skipped, as Megatron does
with open("corpus.txt", "w") as f:
    f.write("\n".join(docs))
# SFT: "k=" prompts with a fixed completion per key
keys = "abcdefgh"; vals = dict(zip(keys, "QRSTUVWX"))
with open("sft.jsonl", "w") as f:
    for _ in range(400):
        k = random.choice(keys)
        f.write(json.dumps({"prompt": "what is " + k + "? ", "completion": vals[k] + "."}) + "\n")
with open("task_text.jsonl", "w") as f:
    for _ in range(20):
        k = random.choice(keys)
        f.write(json.dumps({"context": "what is " + k + "? ", "choices": [vals[c] + "." for c in keys[:4]],
                            "label": 0}) + "\n")
PY

# ---- llm.c from text, Megatron and nanoGPT from JSONL --------------------------------------
"$PY" "$PREP" corpus.txt -o text.bin --tokenizer bytes 2>prep.log || { cat prep.log; fail "llmc"; }
"$PY" "$PREP" docs.jsonl --json-key body -o mg/docs --format megatron --tokenizer bytes 2>>prep.log || fail "megatron"
"$PY" "$PREP" docs.jsonl --json-key body -o raw.bin --format nanogpt --tokenizer bytes 2>>prep.log || fail "nanogpt"
"$PY" "$PREP" sft.jsonl -o sft.bin --sft --tokenizer bytes 2>>prep.log || fail "sft"
"$PY" "$PREP" task_text.jsonl -o task.jsonl --eval-task --tokenizer bytes 2>>prep.log || fail "eval-task"
cat prep.log

"$PY" - <<'PY' || fail "output formats"
import json, struct
docs = [json.loads(l)["body"] for l in open("docs.jsonl")]
docs = [d for d in docs if d]
want = [list(d.encode()) + [0] for d in docs]          # bytes tokenizer: EOS 0 after each document
flat = [t for d in want for t in d]

b = open("text.bin", "rb").read()
h = struct.unpack("<256i", b[:1024])
text = open("corpus.txt", "rb").read()
assert h[:3] == (20240520, 1, len(text) + 1) and not any(h[3:]), h[:4]
assert len(b) == 1024 + 2 * h[2]
assert list(struct.unpack("<%dH" % h[2], b[1024:])) == list(text) + [0]

raw = open("raw.bin", "rb").read()
assert list(struct.unpack("<%dH" % (len(raw) // 2), raw)) == flat

idx = open("mg/docs.idx", "rb").read(); binf = open("mg/docs.bin", "rb").read()
assert idx[:9] == b"MMIDIDX\x00\x00"
version, code, S, D = struct.unpack("<QBQQ", idx[9:34])
assert (version, code, S, D) == (1, 8, len(want), len(want) + 1), (version, code, S, D)
lens = struct.unpack("<%di" % S, idx[34:34 + 4 * S])
ptrs = struct.unpack("<%dq" % S, idx[34 + 4 * S:34 + 12 * S])
dix = struct.unpack("<%dq" % D, idx[34 + 12 * S:])
assert len(idx) == 34 + 12 * S + 8 * D
assert list(lens) == [len(d) for d in want]
assert list(dix) == list(range(S + 1))
for d, n, p in zip(want, lens, ptrs):
    assert list(struct.unpack("<%dH" % n, binf[p:p + 2 * n])) == d

sft = open("sft.bin", "rb").read(); mask = open("sft.mask", "rb").read()
n = struct.unpack("<3i", sft[:12])[2]
toks = struct.unpack("<%dH" % n, sft[1024:])
assert len(mask) == n, (len(mask), n)
i = 0
for line in open("sft.jsonl"):
    r = json.loads(line)
    p, c = r["prompt"].encode(), r["completion"].encode()
    assert bytes(toks[i:i + len(p)]) == p and set(mask[i:i + len(p)]) == {0}
    i += len(p)
    assert list(toks[i:i + len(c) + 1]) == list(c) + [0] and set(mask[i:i + len(c) + 1]) == {1}
    i += len(c) + 1
assert i == n

lines = [json.loads(l) for l in open("task.jsonl")]
src = [json.loads(l) for l in open("task_text.jsonl")]
assert len(lines) == len(src) == 20
for a, s in zip(lines, src):
    assert a["context"] == list(s["context"].encode()) and a["label"] == s["label"]
    assert a["choices"] == [list(c.encode()) for c in s["choices"]]
print("ok: llm.c, nanoGPT and Megatron files, the SFT mask and the task lines match the formats")
PY

# the Hugging Face path without the optional libraries: one clear message
if ! "$PY" -c "import transformers" 2>/dev/null && ! "$PY" -c "import tokenizers" 2>/dev/null; then
  out=$("$PY" "$PREP" corpus.txt -o x.bin --tokenizer gpt2 2>&1); rc=$?
  [[ $rc -eq 1 ]] && grep -q "pip install transformers" <<<"$out" && ok "missing transformers: $out" ||
    fail "missing transformers: rc=$rc $out"
fi
out=$("$PY" "$PREP" sft.jsonl -o bad.bin --sft --prompt-key question --tokenizer bytes 2>&1)
[[ $? -eq 1 ]] && grep -q "sft.jsonl:1: no key 'question'" <<<"$out" && ok "$out" || fail "missing key: $out"

# ---- lossytp trains on them -------------------------------------------------------------------
small=(--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --vocab-size 256
       --micro-batch-size 4 --eval-interval 0 --eval-iters 2 --threads 1 --quiet)
train() {  # train NAME args...: runs, checks completed
  local name=$1; shift
  out=$("$L" train "${small[@]}" --out "run_$name" "$@" 2>&1) || { echo "$out"; fail "training on $name"; return; }
  "$PY" - "run_$name" <<'PY' && ok "trained on $name" || fail "run_$name"
import json, sys
cfg = json.load(open(sys.argv[1] + "/config.json"))
print(sys.argv[1], cfg["data"], cfg["data-format"], cfg.get("loss-mask", "-"))
PY
}
train llmc --data text.bin --train-iters 5
train megatron --data-path mg/docs --train-iters 5
grep -q '"data-format": "megatron"' run_megatron/config.json || fail "--data-path should record data-format megatron"
train megatron_toml --config <(printf 'data-path = "mg/docs"\ntrain-iters = 3\n')
train nanogpt --data raw.bin --eval-data-path mg/docs --train-iters 3
# SFT: the loss is taken on the 3 completion tokens only ("X." and EOS, all determined by the
# prompt's key): ln(8)/3 = 0.69 if the key is ignored, towards 0 once the mapping is learnt
"$L" train "${small[@]}" --out run_sft --data sft.bin --loss-mask sft.mask --train-iters 300 --lr 0.003 \
    --log-interval 300 --eval-interval 300 > sft.log 2>&1 || { cat sft.log; fail "sft training"; }
grep -q '"loss-mask"' run_sft/config.json || fail "config.json lacks loss-mask"
if "$PY" -c "import h5py" 2>/dev/null; then
  "$PY" - <<'PY' && ok "SFT learns the completions" || fail "SFT loss"
import h5py
f = h5py.File("run_sft/metrics.h5", "r")
loss = f["train/loss"][:]; ev = f["eval/loss"][:]
last = loss[-10:].mean()
print("sft train loss", loss[0], "->", last, "(mean of the last 10), eval", ev[-1])
assert loss[0] > 4 and last < 0.4 and ev[-1] < 0.4, (loss[0], last, ev[-1])
PY
fi

# ---- bad data: one message, exit 2, nothing written -------------------------------------------
expect_error() {  # expect_error "text" args...
  local want=$1; shift
  out=$("$L" train "${small[@]}" --train-iters 2 --out run_bad "$@" 2>&1); rc=$?
  if [[ $rc -eq 2 ]] && grep -qF -- "$want" <<<"$out" && [[ $(grep -c "lossytp: error:" <<<"$out") -eq 1 ]] && [[ ! -e run_bad ]]; then
    ok "$(grep "lossytp: error:" <<<"$out")"
  else
    fail "$* -> rc=$rc, expected '$want'"; echo "$out" | sed 's/^/    /'
  fi
}
head -c 100 sft.mask > short.mask
expect_error "loss mask short.mask: has 100 bytes but data sft.bin has" --data sft.bin --loss-mask short.mask
expect_error "--data-path mg/docs and --data text.bin both name the training data" --data text.bin --data-path mg/docs
expect_error "--loss-mask sft.mask needs --data" --loss-mask sft.mask
expect_error "--eval-loss-mask sft.mask needs --eval-data" --data sft.bin --eval-loss-mask sft.mask
expect_error "data file text.bin has tokens up to" --data text.bin --vocab-size 100
expect_error "is beyond the vocabulary (ids 0..99)" --data text.bin --vocab-size 100
expect_error "neither nothing.idx nor nothing.bin exists" --data-path nothing.idx
cp mg/docs.bin trunc.bin; head -c 50 mg/docs.idx > trunc.idx
expect_error "megatron index trunc.idx: truncated" --data-path trunc

[[ $fails -eq 0 ]] || { echo "$fails failure(s)"; exit 1; }
echo "prepare_data: all checks passed"
