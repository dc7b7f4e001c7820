#!/usr/bin/env bash
# Creates (if missing) the PyTorch 2.x peer of the benchmarks: a venv with torch and transformers
# from PyPI (about 3 GB with the CUDA libraries, which also run on a CPU-only machine; torch 2.x
# uses MKL/oneDNN, so the benchmarks set MKL_NUM_THREADS as well as OMP_NUM_THREADS).
#
# Usage: bash bench/setup_torch_venv.sh [--cpu-wheels]
#   --cpu-wheels  install torch from PyTorch's CPU-only index (~200 MB instead of ~3 GB)
# Environment: LOSSYTP_TORCH_VENV (default ~/.cache/lossytp/venv-torch): where the venv goes.
# Prints the venv's python path on the last line of stdout. Idempotent: an existing venv in which
# torch (>= 2) and transformers import is left as it is.
set -euo pipefail

VENV=${LOSSYTP_TORCH_VENV:-$HOME/.cache/lossytp/venv-torch}
cpu_wheels=0
for a in "$@"; do
  case "$a" in
    --cpu-wheels) cpu_wheels=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "setup_torch_venv.sh: unknown argument '$a'" >&2; exit 2 ;;
  esac
done

# Debian's python (not a pyenv shim that may be first on PATH): the venv is built from it.
PY=/usr/bin/python3
[[ -x "$PY" ]] || PY=$(command -v python3)

check() {
  "$VENV/bin/python" - <<'EOF' 2>/dev/null
import torch, transformers
assert int(torch.__version__.split(".")[0]) >= 2, torch.__version__
print(f"torch {torch.__version__}, transformers {transformers.__version__}")
EOF
}

if [[ -x "$VENV/bin/python" ]] && check >&2; then
  echo "setup_torch_venv.sh: $VENV is ready" >&2
  echo "$VENV/bin/python"
  exit 0
fi

if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "setup_torch_venv.sh: $PY lacks venv/ensurepip; installing python3-venv" >&2
  SUDO=; [[ $(id -u) == 0 ]] || SUDO=sudo
  $SUDO apt-get install -y python3-venv >&2 || { $SUDO apt-get update >&2 && $SUDO apt-get install -y python3-venv >&2; }
fi

mkdir -p "$(dirname "$VENV")"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
if (( cpu_wheels )); then
  "$VENV/bin/python" -m pip install --index-url https://download.pytorch.org/whl/cpu torch >&2
else
  "$VENV/bin/python" -m pip install torch >&2
fi
"$VENV/bin/python" -m pip install transformers >&2
check >&2 || { echo "setup_torch_venv.sh: torch/transformers do not import in $VENV" >&2; exit 1; }
echo "$VENV/bin/python"
