#!/usr/bin/env bash
# ctest reference_model: one lossytp step (loss and every gradient) of several small models
# against the float64 NumPy reference (llama_reference.py), which first checks its own backward
# with finite differences; then, where bench/setup_torch_venv.sh's venv exists, Hugging Face's own
# models on the same weights against both (hf_crosscheck.py).
#
# Usage: bash tests/reference/run.sh DUMP_EXE WORKDIR [NAME...]
#   DUMP_EXE  the lossytp_dump_step binary; WORKDIR  scratch folder (recreated)
#   NAME...   only these configurations (default: all)
# Exit: 0 all pass, 1 a failure, 77 (ctest: skipped) when /usr/bin/python3 has no NumPy.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exe=${1:?usage: run.sh DUMP_EXE WORKDIR [NAME...]}
work=${2:?usage: run.sh DUMP_EXE WORKDIR [NAME...]}
shift 2

PY=/usr/bin/python3
[[ -x $PY ]] || PY=$(command -v python3)
if ! "$PY" -c 'import numpy' 2>/dev/null; then
  echo "reference_model: SKIPPED: $PY cannot import numpy (apt-get install python3-numpy)"
  exit 77
fi

llama="--vocab-size 250 --make-vocab-size-divisible-by 128 --seq-length 48 --num-layers 2
  --hidden-size 64 --num-attention-heads 8 --ffn-hidden-size 96 --normalization RMSNorm
  --position-embedding-type rope --rotary-base 10000 --swiglu --disable-bias-linear
  --untie-embeddings-and-output-weights --micro-batch-size 2"
declare -A configs=(
  # llama-tiny-shaped: GQA 8 heads / 4 groups, padded vocabulary (250 -> 256)
  [llama_gqa4]="$llama --group-query-attention --num-query-groups 4 --tokens 24 --seed 11"
  # MHA, half the head dims rotated, T not a power of two
  [llama_mha_rot50]="$llama --rotary-percent 0.5 --tokens 37 --seed 12"
  # multi-query: one K/V head for all 8 query heads
  [llama_gqa1]="$llama --group-query-attention --num-query-groups 1 --tokens 32 --seed 13"
  # GPT-2: LayerNorm, learned positions, tanh-GELU 4h MLP, biases, tied output
  [gpt2]="--vocab-size 256 --make-vocab-size-divisible-by 128 --seq-length 40 --num-layers 2
    --hidden-size 64 --num-attention-heads 4 --normalization LayerNorm
    --position-embedding-type learned_absolute --micro-batch-size 2 --tokens 40 --seed 14"
  # GPT-NeoX-shaped: LayerNorm + RoPE on a quarter of the head dims + GELU + biases, untied
  [neox_rot25]="--vocab-size 250 --make-vocab-size-divisible-by 128 --seq-length 32 --num-layers 2
    --hidden-size 64 --num-attention-heads 4 --ffn-hidden-size 112 --normalization LayerNorm
    --position-embedding-type rope --rotary-percent 0.25 --rotary-base 500000
    --untie-embeddings-and-output-weights --micro-batch-size 2 --tokens 29 --seed 16"
  # the parts mixed: LayerNorm + RoPE (a quarter of the dims) + SwiGLU + biases + GQA, tied
  # output over a padded vocabulary
  [mixed_tied]="--vocab-size 250 --make-vocab-size-divisible-by 64 --seq-length 32 --num-layers 2
    --hidden-size 64 --num-attention-heads 4 --group-query-attention --num-query-groups 2
    --ffn-hidden-size 80 --normalization LayerNorm --position-embedding-type rope
    --rotary-percent 0.25 --rotary-base 500000 --swiglu --micro-batch-size 2 --tokens 19 --seed 15"
)
order=(llama_gqa4 llama_mha_rot50 llama_gqa1 gpt2 neox_rot25 mixed_tied)
(( $# )) && order=("$@")

rm -rf "$work"
mkdir -p "$work"
failed=()
for name in "${order[@]}"; do
  [[ -n ${configs[$name]+x} ]] || { echo "run.sh: unknown configuration $name"; exit 2; }
  echo "=== $name"
  # shellcheck disable=SC2086
  if ! "$exe" ${configs[$name]} --out "$work/$name"; then
    echo "=== $name: lossytp_dump_step FAILED"
    failed+=("$name")
    continue
  fi
  "$PY" "$here/llama_reference.py" "$work/$name" || failed+=("$name")
done

# A third opinion where the PyTorch 2.x venv exists (bench/setup_torch_venv.sh): transformers'
# own LlamaForCausalLM / GPTNeoXForCausalLM / GPT2LMHeadModel in float64 on the same dumps,
# against the NumPy reference and lossytp. LOSSYTP_REFERENCE_HF=0 skips it, =1 requires it.
hf_py=${LOSSYTP_TORCH_VENV:-${HOME:-/nonexistent}/.cache/lossytp/venv-torch}/bin/python
hf=${LOSSYTP_REFERENCE_HF:-auto}
if [[ $hf != 0 ]] && [[ -x $hf_py ]] && "$hf_py" -c 'import torch, transformers' 2>/dev/null; then
  echo "=== Hugging Face cross-check ($hf_py)"
  dirs=()
  for name in "${order[@]}"; do [[ -f $work/$name/meta.json ]] && dirs+=("$work/$name"); done
  (( ${#dirs[@]} )) && { "$hf_py" "$here/hf_crosscheck.py" "${dirs[@]}" 2> >(grep -v '^\[transformers\]' >&2) || failed+=(hf_crosscheck); }
elif [[ $hf == 1 ]]; then
  echo "=== Hugging Face cross-check: $hf_py with torch and transformers is missing (bench/setup_torch_venv.sh)"
  failed+=(hf_crosscheck)
else
  echo "=== Hugging Face cross-check skipped (no torch+transformers venv at $hf_py)"
fi

echo
if (( ${#failed[@]} )); then
  echo "reference_model: FAILED: ${failed[*]}"
  exit 1
fi
echo "reference_model: all ${#order[@]} configurations match the reference"
