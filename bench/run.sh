#!/usr/bin/env bash
# lossytp CPU benchmark: builds lossytp (Release) if needed, then measures in one go
#   - sgemm peak of lossytp::cpu::sgemm (1 and 2 threads),
#   - lossytp gpt-tiny, 1 rank x 1 thread, against a PyTorch peer (bench/torch_gpt.py), 1 thread,
#   - lossytp TP=2 on 2 ranks x 1 thread against TP=1,
#   - lossytp 1 rank x 2 threads against PyTorch 2 threads (information),
# and prints a table (tokens/s, model GFLOP/s, fraction of the sgemm peak, peak RSS, targets).
# Writes bench/results/latest.json. Details: docs/performance.md.
#
# Usage: bash bench/run.sh [llama] [--quick] [--no-build] [options of bench/run_cpu.py, e.g. --rounds 5]
#   llama       the Llama suite instead (run_cpu.py --suite llama): lossytp llama-tiny 1 thread
#               against transformers' LlamaForCausalLM on PyTorch 2.x (bench/setup_torch_venv.sh
#               makes its venv) and Debian's torch 1.13 if installed, TP=2 against TP=1, and
#               gpt2-124m at 2 threads against PyTorch 2.x at the same micro-batch; writes
#               bench/results/llama-latest.json
#   --quick     smoke run (1 round of 10 steps per configuration, under 2 minutes)
#   --no-build  use the binaries already built (e.g. while the working tree does not compile)
# Environment: LOSSYTP_BUILD_DIR (default: build) -- must be (or become) a Release build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

no_build=0
suite=gpt
args=()
for a in "$@"; do
  if [[ "$a" == "--no-build" ]]; then no_build=1
  elif [[ "$a" == "llama" || "$a" == "--suite=llama" ]]; then suite=llama
  else args+=("$a"); fi
done

PY=/usr/bin/python3   # Debian's python: the one with python3-torch and python3-h5py
BUILD_DIR=${LOSSYTP_BUILD_DIR:-build}

# ---- prerequisites (nothing is installed here)
if [[ $suite == llama ]]; then
  venv_py=${LOSSYTP_TORCH_VENV:-$HOME/.cache/lossytp/venv-torch}/bin/python
  if ! "$venv_py" -c 'import torch, transformers' >/dev/null 2>&1; then
    echo "bench/run.sh llama: $venv_py cannot import torch and transformers: the PyTorch 2.x peers" >&2
    echo "  will be skipped. Create the venv with:  bash bench/setup_torch_venv.sh" >&2
  fi
elif ! "$PY" -c 'import torch' >/dev/null 2>&1; then
  echo "bench/run.sh: '$PY -c \"import torch\"' fails: the PyTorch peer is missing." >&2
  echo "  Install it with:  scripts/install-deps.sh --bench" >&2
  exit 1
fi
if ! "$PY" -c 'import h5py' >/dev/null 2>&1; then
  echo "bench/run.sh: '$PY' cannot import h5py (needed to read metrics.h5)." >&2
  echo "  Install it with:  scripts/install-deps.sh --bench" >&2
  exit 1
fi
command -v mpirun >/dev/null || { echo "bench/run.sh: mpirun not found (scripts/install-deps.sh)" >&2; exit 1; }

# ---- build (Release). An existing build folder of another type is left alone: use build-release.
if [[ -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  type=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$BUILD_DIR/CMakeCache.txt")
  if [[ "$type" != "Release" ]]; then
    echo "bench/run.sh: $BUILD_DIR is a '${type:-no type}' build; benchmarking from build-release instead." >&2
    BUILD_DIR=build-release
  fi
fi
if (( no_build )); then
  for exe in "$BUILD_DIR/lossytp" "$BUILD_DIR/bench/bench_sgemm_peak" "$BUILD_DIR/bench/bench_netmodel_masks"; do
    [[ -x "$exe" ]] || { echo "bench/run.sh: --no-build but $exe does not exist" >&2; exit 1; }
  done
  echo "bench/run.sh: --no-build: using the binaries already in $BUILD_DIR (they may predate the working tree)" >&2
  build_status=skipped
else
  echo "bench/run.sh: building lossytp (Release) in $BUILD_DIR ..." >&2
  if ! { cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null &&
         cmake --build "$BUILD_DIR" -j2 --target lossytp bench_sgemm_peak bench_netmodel_masks >/dev/null; }; then
    echo "bench/run.sh: the build failed (see above). To benchmark the binaries already built, run" >&2
    echo "  bash bench/run.sh --no-build ${args[*]}" >&2
    exit 1
  fi
  build_status=built
fi

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec "$PY" bench/run_cpu.py --suite "$suite" --build-dir "$BUILD_DIR" --build-status "$build_status" "${args[@]}"
