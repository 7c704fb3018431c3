#!/usr/bin/env bash
# Builds and runs the whole test suite through ctest. Extra arguments go to ctest (e.g. -L unit).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
cd build
# ctest runs two tests at once on two cores: sleeping (not spinning) OpenMP waits keep oversubscribed
# tests from slowing each other down tenfold.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
ctest --output-on-failure -j "$(nproc)" "$@"
