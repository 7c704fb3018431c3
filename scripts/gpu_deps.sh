#!/usr/bin/env bash
# Fetches, on a machine with Debian's package archive, the libraries `train` builds against that a
# GPU machine without network access may lack (yaml-cpp, Boost.ProgramOptions, Gloo and what it links,
# OpenBLAS), as .deb files in DIR (default .gpudeps/, kept out of git through .git/info/exclude).
# The package names are Debian 12 (bookworm)'s, the release scripts/setup.sh targets; apt-get stops
# with an error naming any that another release lacks.
# Carry DIR to the GPU machine and run `bench/gpu.sh --deps DIR`: it unpacks them into a private prefix
# (dpkg -x, nothing installed system-wide) and builds against it. About 25 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.gpudeps}
PKGS=(libyaml-cpp-dev libyaml-cpp0.7
      libboost-program-options1.74-dev libboost-program-options1.74.0 libboost1.74-dev
      libgloo-dev libgloo0 libhiredis0.14 libibverbs1 libnl-3-200 libnl-route-3-200
      libopenblas-dev libopenblas-pthread-dev libopenblas0-pthread libopenblas0 libgfortran5)
mkdir -p "$DIR"
if [[ -d .git && $DIR == .gpudeps ]] && ! grep -qx '/.gpudeps/' .git/info/exclude 2>/dev/null; then
  echo '/.gpudeps/' >>.git/info/exclude
fi
(cd "$DIR" && apt-get download "${PKGS[@]}" >/dev/null)
echo "scripts/gpu_deps.sh: $(ls "$DIR"/*.deb | wc -l) packages, $(du -sh "$DIR" | cut -f1) in $DIR"
echo "on the GPU machine: bench/gpu.sh --deps $DIR   (device tool: carry [\"$DIR\"])"
