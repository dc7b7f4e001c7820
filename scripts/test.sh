#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (unit, MPI under mpirun, CLI) via ctest,
# then each libFuzzer target for LOSSYTP_FUZZ_SECONDS (default 10; 0 skips) from its committed
# seed corpus (scripts/fuzz.sh, docs/testing.md). Arguments go to ctest; with any, the fuzz step
# is skipped (a filtered run, e.g. `scripts/test.sh -L fault`, is a developer's quick check).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
# mpirun refuses root without these; CI and containers run as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
(cd build && ctest --output-on-failure "$@")
fuzz_secs=${LOSSYTP_FUZZ_SECONDS:-10}
if (( $# == 0 && fuzz_secs > 0 )); then
  echo "== fuzzing: ${fuzz_secs} s per target (LOSSYTP_FUZZ_SECONDS=0 skips)"
  bash scripts/fuzz.sh "$fuzz_secs"
fi
