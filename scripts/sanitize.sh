#!/usr/bin/env bash
# The CPU unit tests (not the slower end-to-end and multi-process ones) under AddressSanitizer +
# UndefinedBehaviorSanitizer, in build-asan/ without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -f build-asan/build.ninja ]]; then
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSCMOE_SANITIZE=ON -DSCMOE_CUDA=OFF
fi
cmake --build build-asan -j "$(nproc)"
cd build-asan
OMP_WAIT_POLICY=passive ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  ctest --output-on-failure -j "$(nproc)" -L unit -LE "e2e|multiprocess" "$@"
