#!/usr/bin/env bash
# lossytp GPU benchmark: builds lossytp (Release, with the GPU path) if needed, then measures
# the bf16 GEMM peak, lossytp gpt2-124m --bf16 micro-batch 16 (tokens/s, MFU), the PyTorch
# eager peer on the same GPU, and lossytp fp32. Writes bench/results/gpu-latest.json.
# Details: docs/performance.md ("GPU").
#
# Usage: bash bench/run_gpu.sh [--no-build] [options of bench/run_gpu.py, e.g. --iters 50]
# Environment: LOSSYTP_BUILD_DIR (default: build); TORCH_PYTHON: a python whose torch has CUDA
# (Debian's python3-torch is CPU-only: `pip install torch` in a venv and point TORCH_PYTHON at it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR=${LOSSYTP_BUILD_DIR:-build}
no_build=0
args=()
for a in "$@"; do
  if [[ "$a" == "--no-build" ]]; then no_build=1; else args+=("$a"); fi
done
command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 ||
  { echo "bench/run_gpu.sh: no NVIDIA GPU here (nvidia-smi -L fails); the CPU benchmark is bench/run.sh" >&2; exit 1; }
if (( ! no_build )); then
  echo "bench/run_gpu.sh: building lossytp (Release, GPU path) in $BUILD_DIR ..." >&2
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DLOSSYTP_CUDA=ON >/dev/null
  cmake --build "$BUILD_DIR" -j"$(nproc)" --target lossytp bench_gemm_peak_bf16 >/dev/null
fi
[[ -x "$BUILD_DIR/bench/bench_gemm_peak_bf16" ]] ||
  { echo "bench/run_gpu.sh: $BUILD_DIR has no GPU path (CMake found no CUDA/NCCL?)" >&2; exit 1; }
exec /usr/bin/python3 bench/run_gpu.py --build-dir "$BUILD_DIR" "${args[@]}"
