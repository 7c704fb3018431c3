#!/usr/bin/env bash
# The CPU tests under a sanitizer, in their own build tree without CUDA:
#   scripts/sanitize.sh address   AddressSanitizer + UndefinedBehaviorSanitizer over the unit and emulated
#                                 kernel tests (kernel overruns show as heap overflows; not
#                                 the slower end-to-end, multi-process and whole-model ones, which the
#                                 release build runs) and a small overlapped step on the emulated
#                                 device (label tsan), in build-asan/
#   scripts/sanitize.sh thread    ThreadSanitizer over the unit tests (streams, store, Gloo, multi-process
#                                 and overlapped training included) and the overlapped step on the
#                                 emulated device (its stream threads, events and fibers; label tsan),
#                                 one at a time, in build-tsan/.
#                                 OpenMP runs one thread: libgomp is not instrumented, so its barriers
#                                 would be reported as races. Left out: test_moe_dispatch (it forces two
#                                 OpenMP threads to test thread-count independence, hence exactly those
#                                 false reports) and train_learns (200 steps; minutes under TSan).
#                                 Races inside libraries we do not build: scripts/tsan_suppressions.txt.
# Extra arguments go to ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-address}
shift || true
case $mode in
  address) dir=build-asan option=-DSCMOE_SANITIZE=ON
           tests=(-L "unit|emu" -LE "e2e|multiprocess|model") jobs=$(nproc)
           export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 OMP_WAIT_POLICY=passive ;;
  thread)  dir=build-tsan option=-DSCMOE_TSAN=ON
           tests=(-L "unit|tsan" -E "test_moe_dispatch|train_learns") jobs=1  # timing-sensitive tests, 5-15x slower
           export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/scripts/tsan_suppressions.txt" OMP_NUM_THREADS=1 ;;
  *) echo "usage: scripts/sanitize.sh [address|thread] [ctest args]" >&2; exit 2 ;;
esac
if [[ ! -f $dir/build.ninja ]]; then
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$option" -DSCMOE_CUDA=OFF
fi
cmake --build "$dir" -j "$(nproc)"
cd "$dir"
ctest --output-on-failure -j "$jobs" "${tests[@]}" "$@"
