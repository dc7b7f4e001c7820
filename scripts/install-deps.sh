#!/usr/bin/env bash
# Installs every build and test dependency of lossytp from Debian's packages.
# Usage: scripts/install-deps.sh [--bench]   (--bench adds the PyTorch CPU peer for bench/)
set -euo pipefail
pkgs=(build-essential cmake pkg-config
      openmpi-bin libopenmpi-dev
      libhdf5-dev hdf5-tools
      libopenblas-dev libeigen3-dev
      libcli11-dev catch2 libtomlplusplus-dev nlohmann-json3-dev libxxhash-dev
      clang libclang-rt-dev
      python3-numpy python3-h5py python3-matplotlib)
[[ "${1:-}" == "--bench" ]] && pkgs+=(python3-torch)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
