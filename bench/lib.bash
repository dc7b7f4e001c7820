# Sourced by the benchmark scripts (bench/*.sh):  source "$(dirname "$0")/lib.bash" NAME "$@"
# Parses [BUILD_DIR] [--quick] into build and quick, checks /usr/bin/python3 with h5py and mpirun,
# builds lossytp in BUILD_DIR (unless SKIP_BUILD=1), and sets bin (the binary), PY, out (a
# temporary folder removed on exit) and the mpirun-as-root environment.
bench_name=$1; shift
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$root/build
quick=0
for a in "$@"; do
  if [[ $a == --quick ]]; then quick=1; else build=$a; fi
done
PY=/usr/bin/python3
"$PY" -c 'import h5py' 2>/dev/null || { echo "bench/$bench_name.sh: $PY cannot import h5py" >&2; exit 1; }
command -v mpirun >/dev/null || { echo "bench/$bench_name.sh: mpirun not found" >&2; exit 1; }
if [[ ${SKIP_BUILD:-0} != 1 ]]; then cmake --build "$build" -j2 --target lossytp > /dev/null; fi
bin=$build/lossytp
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
