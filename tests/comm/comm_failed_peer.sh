#!/usr/bin/env bash
# A job with a dead or hung rank 1: runs `comm_tests --dead-peer|--hung-peer` through the launcher
# and expects a failed job in which every other rank reported the failed collective by name, in time.
# usage: comm_failed_peer.sh --dead-peer|--hung-peer NPROC PYTHON3 LAUNCH COMM_TESTS [--shm]
set -u
mode=$1 nproc=$2 python=$3 launch=$4 comm_tests=$5
shift 5  # what is left goes to comm_tests (--shm: All-to-Alls through shared memory)

fail() {
  echo "FAIL ($mode): $*"
  exit 1
}

start=$SECONDS
out=$("$python" "$launch" --nproc-per-node "$nproc" --master-port 0 -- "$comm_tests" "$mode" "$@" 2>&1)
rc=$?
elapsed=$((SECONDS - start))
printf '%s\n' "$out"

[ "$rc" -ne 0 ] || fail "the launcher exited 0, but the survivors' collectives should have failed"
for r in 0 $(seq 2 $((nproc - 1))); do
  grep -q "all_reduce_sum on rank $r of $nproc failed" <<<"$out" ||
    fail "rank $r did not report the failed all_reduce_sum"
  grep -q "rank $r: [0-9]* checks passed" <<<"$out" || fail "rank $r's checks did not pass"
done
# Each survivor waits at most its 5 s timeout per collective; far more means something hung.
[ "$elapsed" -lt 60 ] || fail "took ${elapsed} s"
echo "PASS ($mode): the job failed in ${elapsed} s and every surviving rank named the collective"
