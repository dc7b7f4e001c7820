#!/usr/bin/env bash
# Fresh machine to first result: installs the dependencies (Debian packages), builds, and runs
# the quickstart grid end to end: TP=2 training of a gpt-tiny-sized model on the built-in
# synthetic corpus under exact, i.i.d.-loss, bursty-loss and CAAT-Net networks, 2 seeds each,
# then the summary CSVs and the plots. Results: runs/quickstart/ (summary.csv,
# summary_over_seeds.csv, plots/*.png, one folder per run with metrics.h5).
# Re-running it resumes: finished runs are kept, interrupted ones continue from checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out=${1:-runs/quickstart}
mpirun --oversubscribe --bind-to none -np 2 build/lossytp grid experiments/quickstart.toml --out "$out"
build/lossytp summarize "$out"
build/lossytp plot "$out"
