#!/usr/bin/env python3
"""Tokenize text or JSONL into the token files lossytp trains on (docs/data.md).

Modes:
  default       text / JSONL documents -> one token file (llm.c .bin, Megatron .bin/.idx or raw
                uint16); each non-empty document is followed by the tokenizer's EOS token
                (as Megatron's --append-eod and nanoGPT do; --no-eos to leave it out).
  --sft         JSONL {"prompt": str, "completion": str} -> tokens of prompt + completion + EOS,
                and a loss mask (one uint8 per token: 0 for prompt tokens, 1 for completion tokens
                and the EOS), for lossytp train --loss-mask.
  --eval-task   JSONL {"context": str, "choices": [str, ...], "label": i} -> the same lines with
                token ids ({"context": [ids], "choices": [[ids], ...], "label": i}), for
                lossytp train --eval-task. Context and choices are tokenized separately: put the
                space that separates them at the start of each choice (" yes", as lm-eval does).

Tokenizers (--tokenizer):
  bytes         built in, no dependency: one token per UTF-8 byte (ids 0..255, vocab 256),
                EOS = 0 (the NUL byte).
  NAME or DIR   a Hugging Face tokenizer: transformers.AutoTokenizer.from_pretrained(NAME) when
                transformers is installed, else the `tokenizers` package (DIR/tokenizer.json or
                a hub name). Either is an optional dependency: pip install transformers (or
                tokenizers). Special tokens are not added; the EOS is the tokenizer's eos token
                (--eos-id overrides it).

Token types follow the formats' own rules: llm.c files are uint16 (magic 20240520, version 1)
when every id fits (vocab <= 65536) and uint32 (20240801, version 7) otherwise; Megatron files
are uint16 (dtype code 8) when the vocab is < 65500, else int32 (code 4), as
DType.optimal_dtype does; --format nanogpt writes raw uint16 and needs vocab <= 65536.

Examples:
  prepare_data.py corpus.txt -o train.bin --tokenizer gpt2
  prepare_data.py docs.jsonl -o data/web --format megatron --tokenizer meta-llama/Meta-Llama-3-8B
  prepare_data.py sft.jsonl -o sft.bin --sft --tokenizer gpt2          # sft.bin + sft.mask
  prepare_data.py mnli.jsonl -o mnli_task.jsonl --eval-task --tokenizer gpt2
"""
import argparse
import json
import os
import struct
import sys
from array import array

LLMC_MAGIC16, LLMC_MAGIC32 = 20240520, 20240801
MEGATRON_MAGIC = b"MMIDIDX\x00\x00"


class Fail(Exception):
    pass


# ---- tokenizers ------------------------------------------------------------------------------

class ByteTokenizer:
    """One token per UTF-8 byte; EOS is 0."""
    vocab_size = 256
    eos_id = 0

    def encode(self, text):
        return list(text.encode("utf-8"))


class HFTokenizer:
    def __init__(self, name):
        try:
            from transformers import AutoTokenizer  # optional dependency, imported only here
        except ImportError:
            AutoTokenizer = None
        if AutoTokenizer is not None:
            tok = AutoTokenizer.from_pretrained(name)
            self._encode = lambda s: tok(s, add_special_tokens=False)["input_ids"]
            self.vocab_size = len(tok)
            self.eos_id = tok.eos_token_id
            return
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise Fail("--tokenizer %s needs the Hugging Face tokenizer libraries, which are not "
                       "installed: pip install transformers (or pip install tokenizers); "
                       "--tokenizer bytes needs nothing" % name)
        path = os.path.join(name, "tokenizer.json") if os.path.isdir(name) else name
        tok = Tokenizer.from_file(path) if os.path.isfile(path) else Tokenizer.from_pretrained(name)
        self._encode = lambda s: tok.encode(s, add_special_tokens=False).ids
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.eos_id = None
        for t in ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"):
            if tok.token_to_id(t) is not None:
                self.eos_id = tok.token_to_id(t)
                break

    def encode(self, text):
        return list(self._encode(text))


def make_tokenizer(args):
    tok = ByteTokenizer() if args.tokenizer == "bytes" else HFTokenizer(args.tokenizer)
    if args.eos_id is not None:
        tok.eos_id = args.eos_id
    return tok


# ---- inputs ----------------------------------------------------------------------------------

def is_jsonl(path, args):
    if args.input_type != "auto":
        return args.input_type == "jsonl"
    return path.endswith((".jsonl", ".json", ".ndjson"))


def jsonl_records(path):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise Fail("%s:%d: not a JSON line (%s)" % (path, n, e))
            if not isinstance(rec, dict):
                raise Fail("%s:%d: expected a JSON object" % (path, n))
            yield n, rec


def get_str(rec, key, path, n):
    if key not in rec:
        raise Fail("%s:%d: no key '%s' (keys: %s)" % (path, n, key, ", ".join(sorted(rec)) or "none"))
    if not isinstance(rec[key], str):
        raise Fail("%s:%d: '%s' must be a string" % (path, n, key))
    return rec[key]


def documents(args):
    for path in args.inputs:
        if is_jsonl(path, args):
            for n, rec in jsonl_records(path):
                yield get_str(rec, args.json_key, path, n)
        else:
            with open(path, encoding="utf-8") as f:
                yield f.read()


# ---- outputs ---------------------------------------------------------------------------------

def le(arr):
    if sys.byteorder != "little":
        arr = array(arr.typecode, arr)
        arr.byteswap()
    return arr.tobytes()


def typed(tokens, code):
    # array typecodes: H uint16, I uint32 (4 bytes on every supported platform), i int32, B uint8
    return array(code, tokens)


def write_llmc(path, tokens, vocab):
    wide = vocab > 65536
    header = array("i", [0] * 256)
    header[0], header[1], header[2] = (LLMC_MAGIC32, 7, len(tokens)) if wide else (LLMC_MAGIC16, 1, len(tokens))
    with open(path, "wb") as f:
        f.write(le(header))
        f.write(le(typed(tokens, "I" if wide else "H")))
    return "llm.c %s (magic %d, version %d)" % ("uint32" if wide else "uint16", header[0], header[1])


def write_nanogpt(path, tokens, vocab):
    if vocab > 65536:
        raise Fail("--format nanogpt stores uint16 tokens, but the vocabulary has %d ids; use --format llmc" % vocab)
    with open(path, "wb") as f:
        f.write(le(typed(tokens, "H")))
    return "raw uint16 (nanoGPT)"


def write_megatron(prefix, docs, vocab):
    code, tc, item = (8, "H", 2) if vocab < 65500 else (4, "i", 4)
    lengths = [len(d) for d in docs]
    with open(prefix + ".bin", "wb") as f:
        for d in docs:
            f.write(le(typed(d, tc)))
    pointers, p = [], 0
    for n in lengths:
        pointers.append(p)
        p += n * item
    with open(prefix + ".idx", "wb") as f:
        f.write(MEGATRON_MAGIC)
        f.write(struct.pack("<QBQQ", 1, code, len(docs), len(docs) + 1))
        f.write(le(array("i", lengths)))
        f.write(le(array("q", pointers)))
        f.write(le(array("q", range(len(docs) + 1))))
    return "Megatron indexed dataset (dtype code %d, %s)" % (code, "uint16" if code == 8 else "int32")


def write_tokens(args, docs, vocab):
    """Writes the documents in --format; returns (files written, description)."""
    flat = [t for d in docs for t in d]
    if not flat:
        raise Fail("no tokens: every input document is empty")
    if args.format == "megatron":
        prefix = args.output[:-4] if args.output.endswith((".bin", ".idx")) else args.output
        return [prefix + ".bin", prefix + ".idx"], write_megatron(prefix, docs, vocab)
    writer = write_llmc if args.format == "llmc" else write_nanogpt
    return [args.output], writer(args.output, flat, vocab)


def mask_path(args):
    if args.mask_output:
        return args.mask_output
    base = args.output[:-4] if args.output.endswith((".bin", ".idx")) else args.output
    return base + ".mask"


def need_eos(tok, args):
    if args.no_eos:
        return None
    if tok.eos_id is None:
        raise Fail("the tokenizer has no EOS token: give --eos-id N, or --no-eos")
    return tok.eos_id


# ---- modes -----------------------------------------------------------------------------------

def run_plain(args, tok):
    eos = need_eos(tok, args)
    docs = []
    for text in documents(args):
        ids = tok.encode(text)
        if not ids:  # Megatron skips empty documents (no lone EOS)
            continue
        docs.append(ids + ([eos] if eos is not None else []))
    vocab = max(tok.vocab_size, max(max(d) for d in docs) + 1) if docs else tok.vocab_size
    files, what = write_tokens(args, docs, vocab)
    return files, what, len(docs), sum(map(len, docs))


def run_sft(args, tok):
    eos = need_eos(tok, args)
    docs, masks = [], []
    for path in args.inputs:
        for n, rec in jsonl_records(path):
            p = tok.encode(get_str(rec, args.prompt_key, path, n))
            c = tok.encode(get_str(rec, args.completion_key, path, n)) + ([eos] if eos is not None else [])
            if not c:
                raise Fail("%s:%d: empty completion (nothing to learn) with --no-eos" % (path, n))
            docs.append(p + c)
            masks.append([0] * len(p) + [1] * len(c))
    if not docs:
        raise Fail("no examples in " + ", ".join(args.inputs))
    vocab = max(tok.vocab_size, max(max(d) for d in docs) + 1)
    files, what = write_tokens(args, docs, vocab)
    mp = mask_path(args)
    with open(mp, "wb") as f:
        f.write(bytes(m for ms in masks for m in ms))
    return files + [mp], what + " + loss mask (uint8 per token)", len(docs), sum(map(len, docs))


def run_eval_task(args, tok):
    n_out = 0
    n_tok = 0
    with open(args.output, "w", encoding="utf-8") as out:
        for path in args.inputs:
            for n, rec in jsonl_records(path):
                ctx = tok.encode(get_str(rec, "context", path, n))
                choices = rec.get("choices")
                if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
                    raise Fail("%s:%d: 'choices' must be a non-empty list of strings" % (path, n))
                label = rec.get("label")
                if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
                    raise Fail("%s:%d: 'label' must be an integer in [0, %d)" % (path, n, len(choices)))
                ids = [tok.encode(c) for c in choices]
                if any(not c for c in ids):
                    raise Fail("%s:%d: a choice tokenizes to nothing" % (path, n))
                out.write(json.dumps({"context": ctx, "choices": ids, "label": label}) + "\n")
                n_out += 1
                n_tok += len(ctx) + sum(map(len, ids))
    if n_out == 0:
        raise Fail("no task lines in " + ", ".join(args.inputs))
    return [args.output], "eval task (JSONL of token ids)", n_out, n_tok


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="prepare_data.py", description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Modes:"):], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", metavar="INPUT", help="text or JSONL files (.jsonl/.json: JSONL)")
    ap.add_argument("-o", "--output", required=True,
                    help="output: a .bin file (llmc, nanogpt), a PREFIX (megatron: PREFIX.bin + PREFIX.idx) "
                         "or a .jsonl (--eval-task)")
    ap.add_argument("--tokenizer", required=True, help="'bytes' (built in) or a Hugging Face tokenizer name or directory")
    ap.add_argument("--format", choices=["llmc", "megatron", "nanogpt"], default="llmc",
                    help="token file format (default llmc)")
    ap.add_argument("--input-type", choices=["auto", "text", "jsonl"], default="auto",
                    help="how to read the inputs (auto: JSONL for .jsonl/.json/.ndjson, else one text document per file)")
    ap.add_argument("--json-key", default="text", help="JSONL key of the document text (default text)")
    ap.add_argument("--no-eos", action="store_true", help="do not append the EOS token to each document / example")
    ap.add_argument("--eos-id", type=int, help="EOS token id (default: the tokenizer's; bytes: 0)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--sft", action="store_true",
                      help="supervised fine-tuning: JSONL prompt/completion pairs -> tokens + loss mask")
    mode.add_argument("--eval-task", action="store_true",
                      help="multiple-choice task: JSONL context/choices/label text -> token ids")
    ap.add_argument("--prompt-key", default="prompt", help="--sft: key of the prompt (default prompt)")
    ap.add_argument("--completion-key", default="completion", help="--sft: key of the completion (default completion)")
    ap.add_argument("--mask-output", help="--sft: the loss mask file (default: OUTPUT with .mask for .bin)")
    args = ap.parse_args(argv)
    try:
        if os.path.dirname(args.output):
            os.makedirs(os.path.dirname(args.output), exist_ok=True)
        for p in args.inputs:
            if not os.path.isfile(p):
                raise Fail("input %s does not exist" % p)
        if (args.sft or args.eval_task) and args.input_type == "text":
            raise Fail("--sft and --eval-task read JSONL, not --input-type text")
        tok = make_tokenizer(args)
        run = run_sft if args.sft else run_eval_task if args.eval_task else run_plain
        files, what, n_docs, n_tokens = run(args, tok)
    except (Fail, OSError, UnicodeDecodeError) as e:
        print("prepare_data.py: error: %s" % e, file=sys.stderr)
        return 1
    print("prepare_data.py: %d %s, %d tokens, vocab %d -> %s: %s" % (
        n_docs, "lines" if args.eval_task else "examples" if args.sft else "documents", n_tokens,
        tok.vocab_size, what, " ".join(files)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
