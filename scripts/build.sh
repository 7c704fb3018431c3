#!/usr/bin/env bash
# Configures (once) and builds scmoe into build/ with ninja. Extra arguments go to cmake's configure.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -f build/build.ninja ]]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
fi
cmake --build build -j "$(nproc)"
