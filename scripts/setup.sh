#!/usr/bin/env bash
# Installs every system package scmoe needs on a fresh Debian (12+) machine. Safe to re-run.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config
  libyaml-cpp-dev libboost-program-options-dev libgloo-dev libopenblas-dev libomp-dev
  python3 python3-numpy python3-torch python3-matplotlib
  clang-14 libclang-rt-14-dev   # libFuzzer targets over the parsers
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all packages present"
fi
