#!/usr/bin/env bash
# A stand-in rank for tests/multiprocess/launch_tests.sh:  rank.sh MODE DIR [FAILING_RANK]
# Every mode except `env` records the PIDs of this shell and of a helper child in DIR/pids/, so the
# test can check that nothing outlives the launcher, and marks itself ready (DIR/ready.RANK) once
# its signal dispositions are in place, so the test never signals a half-started rank.
#   env         print the launcher-provided variables (stdout) and one line on stderr, exit 0
#   exit1       FAILING_RANK exits 1 once every rank is ready; the others wait for a long time
#   sigkill     FAILING_RANK kills itself with SIGKILL once every rank is ready; the others wait
#   hang        as exit1, but the other ranks (and their helpers) ignore SIGTERM
#   checkpoint  on SIGTERM or SIGINT, write DIR/ckpt.RANK ("checkpoint SIG") and exit 128+sig
set -u
MODE=$1 DIR=$2 FAILING=${3:-}

if [[ $MODE == env ]]; then
  echo "RANK=$RANK WORLD_SIZE=$WORLD_SIZE LOCAL_RANK=$LOCAL_RANK LOCAL_WORLD_SIZE=$LOCAL_WORLD_SIZE" \
       "MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT OMP_NUM_THREADS=$OMP_NUM_THREADS"
  echo "stderr of rank $RANK" >&2
  exit 0
fi

mkdir -p "$DIR/pids"
echo $$ >"$DIR/pids/rank$RANK"

# A child in the rank's process group, like a data loader or compiler a real rank might start.
start_helper() { sleep 300 & echo $! >"$DIR/pids/rank$RANK.helper"; }

wait_all_ready() {
  shopt -s nullglob
  local ready=("$DIR"/ready.*)
  while (( ${#ready[@]} < WORLD_SIZE )); do sleep 0.05; ready=("$DIR"/ready.*); done
}

case $MODE in
exit1|sigkill|hang)
  [[ $MODE == hang && $RANK != "$FAILING" ]] && trap '' TERM   # inherited by the helper too
  start_helper
  touch "$DIR/ready.$RANK"
  if [[ $RANK == "$FAILING" ]]; then
    wait_all_ready
    sleep 0.2
    [[ $MODE == sigkill ]] && kill -KILL $$
    exit 1
  fi
  wait   # returns only if the helper dies; the launcher must end us long before
  ;;
checkpoint)
  trap 'echo "checkpoint TERM" >"$DIR/ckpt.$RANK"; exit 143' TERM
  trap 'echo "checkpoint INT" >"$DIR/ckpt.$RANK"; exit 130' INT
  start_helper
  touch "$DIR/ready.$RANK"
  wait
  ;;
*)
  echo "rank.sh: unknown mode $MODE" >&2
  exit 2
  ;;
esac
