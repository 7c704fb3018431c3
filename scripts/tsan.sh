#!/usr/bin/env bash
# The threaded parts of the CPU test suite under ThreadSanitizer (build-tsan/, no CUDA): streams and
# events, the rendezvous store, Gloo collectives, the schedule, and overlapped ScMoE training (whose
# exchanges run on a communication thread). OpenMP runs one thread here: libgomp is not instrumented,
# so its own synchronisation would be reported as races.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -f build-tsan/build.ninja ]]; then
  cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSCMOE_TSAN=ON -DSCMOE_CUDA=OFF
fi
cmake --build build-tsan -j "$(nproc)"
cd build-tsan
OMP_NUM_THREADS=1 TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
  ctest --output-on-failure -j "$(nproc)" \
  -R "test_stream|test_store|test_schedule|comm_gloo_2ranks|train_overlap_identical|train_overlap_measured" "$@"
