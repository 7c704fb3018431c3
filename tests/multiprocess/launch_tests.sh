#!/usr/bin/env bash
# Tests of the torchrun-like launcher train/launch (registered in tests/multiprocess/multiprocess.cmake):
#   launch_tests.sh SOURCE_DIR CASE
# Each case works in its own scratch directory and fails with a message saying what was expected.
# The stand-in ranks are tests/launch_fixtures/rank.sh (modes documented there) and chatter.py.
set -euo pipefail
SRC=$1 CASE=$2
LAUNCH=$SRC/train/launch
FIX=$SRC/tests/multiprocess/launch_fixtures
WORK=$(pwd)/launch_test_$CASE
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"

# Fixtures record their PIDs here; on failure, kill them so a broken launcher leaves no mess.
fail() {
  echo "FAIL ($CASE): $*" >&2
  for f in out.txt err.txt; do [[ -s $f ]] && { echo "--- launcher $f:" >&2; head -c 4000 "$f" >&2; }; done
  if [[ -n ${LPID:-} ]]; then kill -KILL "$LPID" 2>/dev/null || true; fi
  for f in "$WORK"/pids/*; do
    if [[ -f $f ]]; then kill -KILL "$(cat "$f")" 2>/dev/null || true; fi
  done
  exit 1
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# Starts the launcher in the background (stdout > out.txt, stderr > err.txt); sets LPID and T0.
start_launcher() {
  T0=$(now_ms)
  "$LAUNCH" "$@" >out.txt 2>err.txt &
  LPID=$!
}

# Waits up to $1 s for the launcher; sets RC (its exit status) and ELAPSED_MS (since start_launcher).
finish_launcher() {
  local deadline=$(( $(now_ms) + $1 * 1000 ))
  while kill -0 "$LPID" 2>/dev/null; do
    (( $(now_ms) < deadline )) || fail "launcher still running $1 s after start; expected it to have exited"
    sleep 0.05
  done
  RC=0
  wait "$LPID" || RC=$?
  ELAPSED_MS=$(( $(now_ms) - T0 ))
  LPID=
}

# Waits up to 30 s until N ranks have marked themselves ready.
wait_ready() {
  local n=$1 deadline=$(( $(now_ms) + 30000 ))
  shopt -s nullglob
  local ready=(ready.*)
  while (( ${#ready[@]} < n )); do
    (( $(now_ms) < deadline )) || fail "only ${#ready[@]} of $n ranks became ready within 30 s"
    kill -0 "$LPID" 2>/dev/null || fail "launcher exited before all $n ranks were ready"
    sleep 0.05
    ready=(ready.*)
  done
}

# A zombie counts as gone: an orphan may wait for a non-reaping PID 1 in containers.
alive() {
  if [[ -r /proc/$1/stat ]]; then
    [[ $(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f1) != Z ]]
  else
    kill -0 "$1" 2>/dev/null
  fi
}

# Every recorded rank and helper process must be gone (within 2 s: SIGKILL is delivered asynchronously).
expect_no_leftovers() {
  local expected=$1 f pid deadline
  shopt -s nullglob
  local files=(pids/*)
  (( ${#files[@]} == expected )) || fail "expected $expected PID files from the ranks, found ${#files[@]}"
  for f in "${files[@]}"; do
    pid=$(cat "$f")
    deadline=$(( $(now_ms) + 2000 ))
    while alive "$pid"; do
      (( $(now_ms) < deadline )) || fail "process $pid (${f#pids/}) still alive after the launcher exited; expected it killed"
      sleep 0.05
    done
  done
}

expect_rc() { [[ $RC == "$1" ]] || fail "launcher exit status $RC, expected $1 ($2)"; }
expect_err() { grep -qF -- "$1" err.txt || fail "launcher stderr lacks '$1'"; }
expect_faster() { (( ELAPSED_MS < $1 )) || fail "launcher took $ELAPSED_MS ms, expected under $1 ms ($2)"; }

case $CASE in
env)
  cores=$(nproc)
  omp=$(( cores / 3 )); (( omp >= 1 )) || omp=1
  env -u OMP_NUM_THREADS "$LAUNCH" --nproc-per-node 3 --master-port 12345 -- bash "$FIX/rank.sh" env . \
    >out.txt 2>err.txt || fail "launcher failed although all ranks exit 0 (status $?)"
  for r in 0 1 2; do
    want="[rank $r] RANK=$r WORLD_SIZE=3 LOCAL_RANK=$r LOCAL_WORLD_SIZE=3 MASTER_ADDR=127.0.0.1 MASTER_PORT=12345 OMP_NUM_THREADS=$omp"
    grep -qxF "$want" out.txt || fail "stdout lacks the line '$want'"
    grep -qxF "[rank $r] stderr of rank $r" err.txt || fail "stderr lacks '[rank $r] stderr of rank $r'"
  done
  [[ $(wc -l <out.txt) == 3 ]] || fail "expected exactly 3 stdout lines, got $(wc -l <out.txt)"
  [[ $(grep -c '^launch: OMP_NUM_THREADS' err.txt) == 1 ]] ||
    fail "expected exactly one launcher note about OMP_NUM_THREADS on stderr"

  # A preset OMP_NUM_THREADS is passed through, without the note.
  OMP_NUM_THREADS=7 "$LAUNCH" --nproc-per-node 2 bash "$FIX/rank.sh" env . >out.txt 2>err.txt ||
    fail "launcher failed with OMP_NUM_THREADS preset"
  [[ $(grep -c 'OMP_NUM_THREADS=7$' out.txt) == 2 ]] || fail "expected both ranks to keep OMP_NUM_THREADS=7"
  ! grep -q '^launch: OMP_NUM_THREADS' err.txt || fail "expected no OMP_NUM_THREADS note when it is preset"

  # Second node of two: global numbering, local numbering from 0, prefixes with the global rank.
  OMP_NUM_THREADS=1 "$LAUNCH" --nnodes 2 --node-rank 1 --nproc-per-node 2 --master-addr 10.0.0.5 \
    --master-port 2222 -- bash "$FIX/rank.sh" env . >out.txt 2>err.txt || fail "launcher failed on node 1 of 2"
  for l in 0 1; do
    r=$(( 2 + l ))
    want="[rank $r] RANK=$r WORLD_SIZE=4 LOCAL_RANK=$l LOCAL_WORLD_SIZE=2 MASTER_ADDR=10.0.0.5 MASTER_PORT=2222 OMP_NUM_THREADS=1"
    grep -qxF "$want" out.txt || fail "stdout lacks the line '$want' (node rank 1 of 2)"
  done

  # --master-port 0: one free port, the same for every rank.
  "$LAUNCH" --nproc-per-node 3 --master-port 0 bash "$FIX/rank.sh" env . >out.txt 2>err.txt ||
    fail "launcher failed with --master-port 0"
  ports=$(grep -o 'MASTER_PORT=[0-9]*' out.txt | sort -u)
  [[ $(wc -l <<<"$ports") == 1 && $ports != MASTER_PORT=0 ]] ||
    fail "expected all ranks to get one non-zero MASTER_PORT for --master-port 0, got: $ports"

  # --print-env prints the variables for each local rank and runs nothing.
  OMP_NUM_THREADS=3 "$LAUNCH" --nproc-per-node 2 --nnodes 2 --node-rank 1 --master-addr host.example \
    --master-port 1234 --print-env -- touch ran >out.txt 2>err.txt || fail "--print-env failed"
  cat >expected.txt <<'EOF'
RANK=2 LOCAL_RANK=0 WORLD_SIZE=4 LOCAL_WORLD_SIZE=2 MASTER_ADDR=host.example MASTER_PORT=1234 OMP_NUM_THREADS=3
RANK=3 LOCAL_RANK=1 WORLD_SIZE=4 LOCAL_WORLD_SIZE=2 MASTER_ADDR=host.example MASTER_PORT=1234 OMP_NUM_THREADS=3
EOF
  diff expected.txt out.txt >&2 || fail "--print-env output differs from expected.txt (diff above)"
  [[ ! -e ran ]] || fail "--print-env ran the command; expected it only to print"

  # --no-prefix: the ranks' lines arrive unprefixed.
  OMP_NUM_THREADS=1 "$LAUNCH" --nproc-per-node 2 --no-prefix bash "$FIX/rank.sh" env . >out.txt 2>err.txt ||
    fail "launcher failed with --no-prefix"
  [[ $(grep -c '^RANK=' out.txt) == 2 ]] || fail "expected 2 unprefixed RANK= lines with --no-prefix"
  ;;

usage)
  "$LAUNCH" --help >out.txt 2>&1 || fail "--help exited non-zero"
  for word in --nproc-per-node --nnodes --node-rank --master-addr --master-port --no-prefix --kill-timeout \
              --print-env RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE MASTER_ADDR MASTER_PORT OMP_NUM_THREADS \
              SLURM_PROCID SLURM_NTASKS SLURM_LOCALID SLURM_NTASKS_PER_NODE SIGTERM SIGINT SIGKILL 'exit status'; do
    grep -qF -- "$word" out.txt || fail "--help does not mention '$word'"
  done
  bad() {  # bad EXPECTED_STATUS WHY ARGS...: the launcher must refuse with that status and say something
    local want=$1 why=$2; shift 2
    RC=0; "$LAUNCH" "$@" >out.txt 2>err.txt || RC=$?
    [[ $RC == "$want" ]] || fail "'launch $*' exited with $RC, expected $want ($why)"
    [[ -s err.txt ]] || fail "'launch $*' printed nothing on stderr; expected an error message"
  }
  bad 2 "no command" --nproc-per-node 2
  bad 2 "node rank out of range" --nnodes 2 --node-rank 2 true
  bad 2 "zero ranks" --nproc-per-node 0 true
  bad 2 "port 0 needs one node" --nnodes 2 --master-port 0 true
  bad 2 "unknown option" --frobnicate true
  bad 127 "command not found" --nproc-per-node 2 ./no-such-program
  grep -qF "no-such-program" err.txt || fail "expected the missing command to be named on stderr"
  # Everything after COMMAND belongs to it, launcher-like options included.
  OMP_NUM_THREADS=1 "$LAUNCH" --nproc_per_node=2 -- echo --nproc-per-node 5 -- x >out.txt 2>err.txt ||
    fail "launcher failed running echo"
  [[ $(grep -cxF -- "--nproc-per-node 5 -- x" <(sed 's/^\[rank [01]\] //' out.txt)) == 2 ]] ||
    fail "expected COMMAND's arguments passed through untouched by both ranks"
  ;;

exit1|sigkill)
  # One rank fails while the others sleep for minutes: the launcher must end them all quickly
  # (well before the default 10 s SIGKILL escalation), name the failed rank and propagate its status.
  failing=1; [[ $CASE == sigkill ]] && failing=0
  start_launcher --nproc-per-node 3 -- bash "$FIX/rank.sh" "$CASE" "$WORK" $failing
  finish_launcher 30
  if [[ $CASE == exit1 ]]; then
    expect_rc 1 "the failed rank's exit status"
    expect_err "launch: rank 1 exited with status 1"
  else
    expect_rc 137 "128 + SIGKILL, the failed rank's signal"
    expect_err "launch: rank 0 killed by signal SIGKILL"
  fi
  expect_faster 8000 "the sleeping ranks should die of SIGTERM at once"
  ! grep -q "sent SIGKILL" err.txt || fail "expected the sleeping ranks to stop on SIGTERM, not to need SIGKILL"
  expect_no_leftovers 6
  ;;

sigterm|sigint)
  # The launcher forwards the signal; every rank writes its checkpoint marker and exits.
  sig=TERM; status=143
  [[ $CASE == sigint ]] && { sig=INT; status=130; }
  # Background jobs of a non-interactive shell start with SIGINT ignored, which the launcher (rightly)
  # keeps; restore the default so that this SIGINT means what a Ctrl-C would.
  T0=$(now_ms)
  python3 -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])' \
    "$LAUNCH" --nproc-per-node 3 -- bash "$FIX/rank.sh" checkpoint "$WORK" >out.txt 2>err.txt &
  LPID=$!
  wait_ready 3
  kill -$sig "$LPID"
  finish_launcher 30
  expect_rc $status "128 + SIG$sig, the signal the launcher received"
  expect_err "launch: received SIG$sig; forwarding SIG$sig"
  for r in 0 1 2; do
    [[ -f ckpt.$r ]] || fail "rank $r wrote no checkpoint marker; expected SIG$sig forwarded to it"
    [[ $(cat ckpt.$r) == "checkpoint $sig" ]] || fail "rank $r's marker says '$(cat ckpt.$r)', expected 'checkpoint $sig'"
  done
  expect_no_leftovers 6   # with SIGINT the helpers ignore it; the launcher's final SIGKILL must get them
  ;;

hang)
  # Rank 1 fails; ranks 0 and 2 ignore SIGTERM, so only SIGKILL after --kill-timeout 2 ends them.
  start_launcher --nproc-per-node 3 --kill-timeout 2 -- bash "$FIX/rank.sh" hang "$WORK" 1
  finish_launcher 30
  expect_rc 1 "the failed rank's exit status"
  expect_err "launch: rank 1 exited with status 1"
  expect_err "ranks 0, 2 still running 2 s after the signal; sent SIGKILL"
  (( ELAPSED_MS >= 2000 )) || fail "launcher exited after $ELAPSED_MS ms; expected it to give ranks the 2 s grace first"
  expect_faster 10000 "2 s grace plus start-up"
  expect_no_leftovers 6
  ;;

output)
  # Two ranks print many lines concurrently, in pieces: every forwarded line must be whole, prefixed
  # with the rank that wrote it, and each rank's lines must arrive complete and in order.
  n=3000
  OMP_NUM_THREADS=1 "$LAUNCH" --nproc-per-node 2 -- python3 "$FIX/chatter.py" $n >out.txt 2>err.txt ||
    fail "launcher failed although both ranks exit 0"
  python3 - out.txt err.txt $n <<'PY' || fail "forwarded output is malformed (details above)"
import re, sys
out_path, err_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def payload(i): return "x" * (10000 if i % 97 == 0 else 1 + i % 50)
def check(path, expected_numbers, tail):
    seen = {"0": [], "1": []}
    extra = {"0": [], "1": []}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.decode("utf-8")   # the launcher must have made everything valid UTF-8
            if line.startswith("launch: "):
                continue
            m = re.fullmatch(r"\[rank (\d)\] rank=(\d) line=(\d+) (x+)\n", line)
            if m:
                assert m[1] == m[2], f"{path}:{lineno}: prefix says rank {m[1]} but the line came from rank {m[2]}"
                i = int(m[3])
                assert m[4] == payload(i), f"{path}:{lineno}: payload of line {i} has {len(m[4])} bytes, expected {len(payload(i))}"
                seen[m[1]].append(i)
                continue
            m = re.fullmatch(r"\[rank (\d)\] rank=(\d) (.*)\n", line)
            assert m and m[1] == m[2], f"{path}:{lineno}: expected a whole '[rank R] rank=R ...' line, got {line[:120]!r}"
            extra[m[1]].append(m[3])
    for r in "01":
        assert seen[r] == expected_numbers, f"{path}: rank {r} lines arrived as {seen[r][:5]}... ({len(seen[r])}), expected {len(expected_numbers)} in order"
        assert extra[r] == tail, f"{path}: rank {r} final lines {extra[r]!r}, expected {tail!r}"
check(out_path, list(range(n)), ["bad byte: \ufffd end", "no newline at end"])
check(err_path, list(range(0, n, 10)), [])
print(f"{out_path}, {err_path}: all lines whole, prefixed and in order")
PY
  ;;

*)
  fail "unknown case '$CASE'"
  ;;
esac
echo "PASS ($CASE)"
