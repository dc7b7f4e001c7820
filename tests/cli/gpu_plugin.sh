#!/usr/bin/env bash
# The GPU half of a CUDA-enabled build is a plugin (liblossytp_cuda.so, kernels/cuda_plugin.h)
# that only --device cuda opens: `lossytp --help` and a CPU run load no libcudart, libcublas,
# libnccl or the plugin (glibc's LD_DEBUG=files logs every library a process loads, dlopen
# included), and a missing plugin is an error for --device cuda only. Where the build has the
# plugin, --device cuda must show up in the same log (so the check can see a load).
# usage: gpu_plugin.sh path/to/lossytp workdir
set -u
L=$1; W=$2
rm -rf "$W"; mkdir -p "$W"; cd "$W"
passes=0; fails=0
pass() { echo "ok: $*"; passes=$((passes+1)); }
fail() { echo "FAIL: $*"; fails=$((fails+1)); }

GPU_LIBS='(liblossytp_cuda|libcudart|libcublas|libcublasLt|libnccl)\.so'
# run NAME CMD...: runs CMD with every loaded library logged to ld.NAME.<pid>; sets rc and out.
run() {
  local name=$1; shift
  out=$(LD_DEBUG=files LD_DEBUG_OUTPUT="$W/ld.$name" "$@" 2>&1); rc=$?
}
gpu_libs_of() { cat "$W"/ld."$1".* 2>/dev/null | grep -oE "file=[^ ]*$GPU_LIBS[^ ]*" | sort -u; }
expect_no_gpu_libs() {  # NAME WHAT
  local libs; libs=$(gpu_libs_of "$1")
  if (( rc != 0 )); then fail "$2 exits 0 (got $rc)"; echo "$out" | tail -5 | sed 's/^/    /'
  elif [[ -n $libs ]]; then fail "$2 loads no GPU library, but it loaded:"; echo "$libs" | sed 's/^/    /'
  else pass "$2 loads no GPU library"; fi
}

run help "$L" --help
expect_no_gpu_libs help "lossytp --help"
run cpu "$L" train --model gpt-tiny --train-iters 2 --quiet --out "$W/cpu"
expect_no_gpu_libs cpu "a CPU training run"

plugin=$(dirname "$L")/liblossytp_cuda.so
if [[ -f $plugin ]]; then
  # With or without a GPU here (exit 0 or 2), validating --device cuda opens the plugin.
  run cuda "$L" train --model gpt-tiny --device cuda --dry-run
  libs=$(gpu_libs_of cuda)
  if grep -q liblossytp_cuda <<<"$libs" && grep -q libcublas <<<"$libs"; then
    pass "--device cuda loads the plugin and cuBLAS"
  else
    fail "--device cuda loads the plugin and cuBLAS (the log shows: ${libs:-nothing})"
  fi
  LOSSYTP_CUDA_PLUGIN="$W/missing.so" run missing "$L" train --model gpt-tiny --device cuda --dry-run
  if (( rc == 2 )) && grep -q "device cuda: cannot load liblossytp_cuda.so.*not found" <<<"$out"; then
    pass "a missing plugin: --device cuda exits 2 with the reason"
  else
    fail "a missing plugin: --device cuda exits 2 with the reason (rc $rc)"; echo "$out" | sed 's/^/    /'
  fi
  LOSSYTP_CUDA_PLUGIN="$W/missing.so" run missing_cpu "$L" train --model gpt-tiny --dry-run
  expect_no_gpu_libs missing_cpu "a missing plugin: a CPU dry run"
else
  echo "note: no $plugin (a build without the GPU path): the CPU checks only"
fi

echo "gpu_plugin: $passes passed, $fails failed"
(( fails == 0 ))
