#!/usr/bin/env bash
# Bounded libFuzzer run (docs/testing.md): builds tests/fuzz's targets with clang in build-fuzz/
# (-DLOSSYTP_FUZZ=ON: ASan+UBSan+libFuzzer) and runs each for SECONDS (default 60) from its
# committed seed corpus tests/fuzz/corpus/<target>/ (read only: new inputs go to
# build-fuzz/corpus/<target>/). A crash leaves build-fuzz/crash-<target>-*: turn it into a
# regression test in tests/unit and fix it.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(fuzz_net_spec fuzz_config fuzz_data_header fuzz_checkpoint fuzz_safetensors)
jobs=${JOBS:-$(nproc)}

cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g" \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DLOSSYTP_FUZZ=ON -DLOSSYTP_TESTS=OFF \
  -DLOSSYTP_CUDA=OFF -DLOSSYTP_FAKE_CUDA_TEST=OFF > build-fuzz.cfg.log 2>&1 || { cat build-fuzz.cfg.log; exit 1; }
mv build-fuzz.cfg.log build-fuzz/configure.log
cmake --build build-fuzz -j "$jobs" --target "${targets[@]}" > build-fuzz/build.log 2>&1 \
  || { tail -50 build-fuzz/build.log; exit 1; }

export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
# Leaks are not checked: a reader that throws mid-way (the expected outcome of most inputs) may
# leave what toml++/CLI11 cache; memory errors, UB, uncaught exceptions and timeouts are.
export ASAN_OPTIONS="detect_leaks=0" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
status=0
for t in "${targets[@]}"; do
  mkdir -p "build-fuzz/corpus/$t"
  echo "== $t: ${secs} s"
  # -rss_limit_mb: a header announcing a huge size must be refused, not allocated.
  if ! build-fuzz/tests/fuzz/$t -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
      -artifact_prefix="build-fuzz/crash-$t-" -print_final_stats=1 \
      "build-fuzz/corpus/$t" "tests/fuzz/corpus/$t" > "build-fuzz/$t.log" 2>&1; then
    status=1
    echo "   FOUND A CRASH: build-fuzz/$t.log"; grep -m3 -E "ERROR|runtime error|terminate|deadly" "build-fuzz/$t.log" || true
  fi
  grep -E "^stat::(number_of_executed_units|new_units_added)|^#[0-9]+.*DONE" "build-fuzz/$t.log" | sed 's/^/   /' || true
done
exit $status
