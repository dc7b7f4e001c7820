#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (unit, MPI under mpirun, CLI) via ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
# mpirun refuses root without these; CI and containers run as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cd build && ctest --output-on-failure "$@"
