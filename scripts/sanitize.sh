#!/usr/bin/env bash
# Sanitizer run, before every release (docs/testing.md): an ASan+UBSan build (build-asan/) runs
# the unit tests and the MPI tests under mpirun -np 1/2/4; a TSan build (build-tsan/) runs the
# tests that run ranks as threads ([virtual], [llama], [checkpoint], [comm], [bf16]; not [kernels]).
#   scripts/sanitize.sh            both
#   scripts/sanitize.sh asan|tsan  one of them
# Extra cmake arguments: SANITIZE_CMAKE_ARGS="-DLOSSYTP_CUDA=OFF ...". Logs: build-*/sanitize.log.
# Any sanitizer report fails the run (UBSan and TSan halt on the first one).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
what=${1:-all}
jobs=${JOBS:-$(nproc)}
# The GPU plugin and the fake-CUDA core are not needed here and double the build.
cmake_args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g"
            -DLOSSYTP_CUDA=OFF -DLOSSYTP_FAKE_CUDA_TEST=OFF ${SANITIZE_CMAKE_ARGS:-})
# One thread per rank: OpenBLAS and libgomp are not instrumented, so their worker threads are
# invisible to TSan (false races) and only slow ASan down.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

build() {  # build <dir> <sanitizer> <targets...>
  local dir=$1 san=$2; shift 2
  echo "== configure and build $dir (LOSSYTP_SANITIZE=$san): $*"
  cmake -S . -B "$dir" "${cmake_args[@]}" -DLOSSYTP_SANITIZE="$san" > "$dir.cfg.log" 2>&1 \
    || { cat "$dir.cfg.log"; exit 1; }
  mv "$dir.cfg.log" "$dir/configure.log"
  cmake --build "$dir" -j "$jobs" --target "$@" > "$dir/build.log" 2>&1 || { tail -50 "$dir/build.log"; exit 1; }
}

timed() {  # timed <label> <command...>: runs it, prints its wall time
  local t0=$SECONDS
  echo "== $1"; shift
  "$@"
  echo "   ($((SECONDS - t0)) s)"
}

if [[ $what == all || $what == asan ]]; then
  build build-asan address lossytp_unit_tests lossytp_mpi_tests
  # Leaks are checked in the unit tests (one process, nothing of Open MPI's loaded but MPI_Init
  # never called). Open MPI's own allocations at MPI_Finalize are reported as leaks in every MPI
  # process, so the MPI runs check memory errors and UB but not leaks.
  timed "unit tests (ASan+UBSan, leaks checked)" \
    env ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1" \
    build-asan/tests/lossytp_unit_tests
  for np in 1 2 4; do
    timed "MPI tests -np $np (ASan+UBSan)" \
      env ASAN_OPTIONS="detect_leaks=0:detect_stack_use_after_return=1" \
      mpirun --oversubscribe --bind-to none -np $np build-asan/tests/lossytp_mpi_tests "[np$np]"
  done
fi

if [[ $what == all || $what == tsan ]]; then
  build build-tsan thread lossytp_unit_tests
  # Every test that runs ranks as threads (training on virtual ranks, the local backend's
  # collectives, checkpoints, wire bf16, scratch reuse across threads). Not the [kernels] ones:
  # they run OpenMP with 2+ threads on purpose, and libgomp's fork/join barriers are not
  # instrumented, so TSan reports every kernel's parallel region as a race (false positives).
  timed "virtual-ranks tests (TSan)" \
    env TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$root/scripts/tsan.supp" \
    build-tsan/tests/lossytp_unit_tests "[virtual],[llama]~[kernels],[checkpoint],[comm],[bf16]~[kernels]"
fi
echo "sanitize.sh: no sanitizer reports"
