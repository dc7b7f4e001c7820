#!/usr/bin/env bash
# Fresh machine to first result: installs dependencies, builds, and trains gpt-tiny with
# tensor parallelism over 2 MPI ranks on the built-in synthetic corpus (its entropy floor is
# known exactly), writing runs/gpt-tiny-tp2-dp1-<time>/metrics.h5.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun --oversubscribe --bind-to none -np 2 build/lossytp train --model gpt-tiny --tp 2 \
  --train-iters 300 --lr 3e-3 --min-lr 3e-4 --lr-warmup-iters 20 --eval-interval 100 \
  --threads 1 "$@"
