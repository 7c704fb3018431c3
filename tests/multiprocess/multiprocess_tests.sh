#!/usr/bin/env bash
# Multi-process end-to-end tests of `train` through the launcher train/launch, on loopback (Gloo on the
# CPU), registered in tests/multiprocess/multiprocess.cmake:
#   multiprocess_tests.sh TRAIN_BIN SOURCE_DIR CASE
# Cases:
#   equiv_<arch>          arch = dense | moe | shared_expert | scmoe: one global batch on 1, 2 and 4 ranks
#                         gives the same metrics and final weights (float64; tolerance below); balance:
#                         moe with sigmoid scores, expert biases and the sequence-level loss
#   resume_2ranks         8 steps on 2 ranks == 4 steps + resume + 4: checkpoint files byte-identical
#   reshard_<F>to<T>      train on F ranks, scripts/reshard_checkpoint.py to T ranks, continue: same losses
#   reshard_dense_<F>to<T>  the same for a dense model (only the optimizer files change)
#   reshard_errors        the re-shard tool's documented errors
#   peer_wait             MoE All-to-Alls over gloo, shared memory, shared memory + barrier: same weights,
#                         consistent peer-wait figures
#   pipeline_2ranks       moe.pipeline_degree 3 on 2 ranks == unpipelined == 1 rank (drops included)
#   balanced_routing      moe.force_balanced_routing: balanced loads, gates that learn nothing
#   world_mismatch_error  moe.num_experts not divisible by the world size
#   config_mismatch       ranks started with different keys: refused at the rendezvous, naming the key
#   hung_rank             SIGSTOP to one rank: the others' timeout error names it
#   rank_killed           SIGKILL to one rank: the launcher tears down the job, names it; resume
#   rank_exit1            one rank's process exits 1: the launcher names it, stops the rest; resume
#   launcher_sigterm      SIGTERM to the launcher: every rank checkpoints and exits 143; resume
# Each case works in its own scratch directory (mp_test_CASE) and fails with a message saying what was
# expected. Tolerance of the equivalence checks: float64 throughout, and the only difference between
# world sizes is the order in which the gradient all-reduce (and the loss/statistics reductions) add
# per-rank partial sums, so metrics agree to 1e-9 relative and every weight tensor to 1e-9 of its
# largest magnitude (observed: ~1e-13; see check.py below for why not element by element).
set -euo pipefail
TRAIN=$1 SRC=$2 CASE=$3
WORK=$(pwd)/mp_test_$CASE
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
TRAIN_REAL=$(readlink -f "$TRAIN")
LAUNCH=$SRC/train/launch
RESHARD=$SRC/scripts/reshard_checkpoint.py
LPID=

fail() {
  echo "FAIL ($CASE): $*" >&2
  exit 1
}

# PIDs of this case's live train processes (their command line names $WORK; zombies count as gone).
rank_pids() {
  local p
  for p in /proc/[0-9]*; do
    [[ $(readlink "$p/exe" 2>/dev/null) == "$TRAIN_REAL" ]] || continue
    tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qF -- "$WORK/" || continue
    echo "${p#/proc/}"
  done
}
# The train process of global rank $1.
pid_of_rank() {
  local p
  for p in $(rank_pids); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "RANK=$1" && echo "$p"
  done
}
# Whatever happens, leave no processes behind.
cleanup() {
  if [[ -n $LPID ]]; then kill -KILL "$LPID" 2>/dev/null || true; fi
  local p
  for p in $(rank_pids); do kill -KILL "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# numpy is needed by the comparisons and the re-shard tool.
PY=python3
"$PY" -c 'import numpy' 2>/dev/null || PY=/usr/bin/python3
"$PY" -c 'import numpy' 2>/dev/null || fail "no python3 with numpy found (tried python3, /usr/bin/python3)"

# Byte-level Tiny Shakespeare shards, prepared once per build tree (shared with train_tests.sh).
DATA=$(dirname "$WORK")/ts_data
if [[ ! -f $DATA/train_000000.bin ]]; then
  python3 "$SRC/data/prepare.py" --input "$SRC/data/tinyshakespeare.txt" --out-dir "$DATA.$$" --tokenizer byte >/dev/null
  mv -T "$DATA.$$" "$DATA" 2>/dev/null || rm -rf "$DATA.$$"  # another test may have won the race
fi

TINY=(--set model.n_layer=2 --set model.d_model=64 --set model.n_head=4 --set model.d_ff=256
      --set model.seq_len=64 --set train.log_every=1 --set train.eval_batches=4
      --set "data.train=$DATA/train_*.bin" --set "data.val=$DATA/val_*.bin" --set train.threads=1
      --set train.device=cpu)  # the CPU backend (Gloo, overlap, peer wait), also where GPUs would be taken
MOE=(--set moe.num_experts=4 --set moe.gate_noise=true)

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# run_w W LOG ARGS...: `train ARGS` as W ranks (W=1: one plain process, no launcher), output to LOG.
# A hang cannot outlive the test: timeout sends SIGTERM (forwarded to the ranks), then SIGKILL.
run_w() {
  local w=$1 log=$2
  shift 2
  if [[ $w == 1 ]]; then
    timeout -k 10 150 "$TRAIN" "$@" >"$log" 2>&1
  else
    timeout -k 10 150 python3 "$LAUNCH" --nproc-per-node "$w" --master-port 0 -- "$TRAIN" "$@" >"$log" 2>&1
  fi
}

# Starts the launcher in the background (stdout > out.txt, stderr > err.txt); sets LPID.
start_launcher() {
  python3 "$LAUNCH" "$@" >out.txt 2>err.txt &
  LPID=$!
}
# Waits up to $1 s for the launcher; sets RC and ELAPSED_MS (since $2, a now_ms time).
finish_launcher() {
  local deadline=$(( $(now_ms) + $1 * 1000 ))
  while kill -0 "$LPID" 2>/dev/null; do
    (( $(now_ms) < deadline )) || { tail -20 err.txt >&2; fail "launcher still running $1 s later"; }
    sleep 0.05
  done
  RC=0
  wait "$LPID" || RC=$?
  ELAPSED_MS=$(( $(now_ms) - $2 ))
  LPID=
}
# Waits up to $1 s until the file glob $2 matches (the launcher must stay alive meanwhile).
wait_for() {
  local deadline=$(( $(now_ms) + $1 * 1000 ))
  until compgen -G "$2" >/dev/null; do
    (( $(now_ms) < deadline )) || { tail -20 err.txt >&2; fail "nothing matched $2 within $1 s"; }
    kill -0 "$LPID" 2>/dev/null || { tail -20 err.txt >&2; fail "launcher exited before $2 appeared"; }
    sleep 0.05
  done
}
last_complete() {  # the newest complete checkpoint's step number (decimal) under $1/checkpoints
  local d last=
  for d in "$1"/checkpoints/step_*; do [[ -f $d/COMPLETE ]] && last=$d; done
  [[ -n $last ]] || fail "no complete checkpoint in $1/checkpoints"
  echo $(( 10#${last##*step_} ))
}
# signal_rank SIG R: sends SIG to global rank R's process; sets victim (its pid) and T0 (now_ms).
signal_rank() {
  victim=$(pid_of_rank "$2")
  [[ $victim =~ ^[0-9]+$ ]] || fail "cannot find rank $2's process (found '$victim')"
  T0=$(now_ms)
  kill "-$1" "$victim"
}
no_rank_left() {  # (a grace of 2 s: a process the launcher just sent SIGKILL may take a moment to die)
  local left deadline=$(( $(now_ms) + 2000 ))
  while left=$(rank_pids | tr '\n' ' ') && [[ -n $left ]] && (( $(now_ms) < deadline )); do sleep 0.05; done
  [[ -z $left ]] || fail "rank processes still running after the launcher exited: $left"
}

# Comparisons (numpy): metrics.jsonl records and checkpoint tensors.
cat >check.py <<'PY'
"""check.py metrics A.jsonl B.jsonl [--from STEP] [--exact]
   check.py weights CKPT_A CKPT_B [--exact] [--optim]
Default tolerance: 1e-9 relative; for tensors, max |a - b| <= 1e-9 * max |a| per tensor.
metrics.jsonl prints %.9g (9 significant digits), so a metric may also differ by one unit in its last
printed digit when the true values straddle a rounding boundary."""
import glob, json, math, os, sys
sys.path.insert(0, os.path.join(os.environ["SRC"], "tests", "torch_ref"))
import numpy as np
import st

RTOL = 1e-9
KEYS = ("loss", "grad_norm", "aux_loss", "val_loss", "moe_drop_frac")

def metrics(path, first):
    out = {}
    for line in open(path):
        r = json.loads(line)
        if r["step"] >= first:
            out.update({(r["step"], k): r[k] for k in KEYS if k in r})
    return out

def close_printed(a, b):
    if a == b:
        return True
    m = max(abs(a), abs(b))
    return abs(a - b) <= RTOL * m or abs(a - b) <= 1.01 * 10 ** (math.floor(math.log10(m)) - 8)

def load_ckpt(d, optim):
    files = ["model.safetensors"] + sorted(glob.glob(os.path.join(d, "experts-rank*.safetensors")))
    if optim:
        files = sorted(glob.glob(os.path.join(d, "optim-rank*.safetensors")))
    out = {}
    for f in files:
        t, _ = st.read(os.path.join(d, os.path.basename(f)))
        for n, a in t.items():
            # Only replicated moments appear in several files; they must be the same everywhere.
            assert n not in out or out[n].tobytes() == a.tobytes(), f"{d}: {n} differs between ranks"
            out[n] = a
    return out

cmd, a, b = sys.argv[1:4]
exact = "--exact" in sys.argv
if cmd == "metrics":
    first = int(sys.argv[sys.argv.index("--from") + 1]) if "--from" in sys.argv else 0
    ma, mb = metrics(a, first), metrics(b, first)
    assert ma, f"{a}: no metrics from step {first}"
    assert set(ma) == set(mb), f"records differ: only in {a}: {sorted(set(ma) - set(mb))[:5]}, only in {b}: {sorted(set(mb) - set(ma))[:5]}"
    worst, last_digit = 0.0, 0
    for k in sorted(ma):
        x, y = ma[k], mb[k]
        ok = x == y if exact else close_printed(x, y)
        assert ok, f"step {k[0]} {k[1]}: {x!r} vs {y!r} (rel {abs(x - y) / max(abs(x), abs(y)):.3g})"
        if x != y:
            worst = max(worst, abs(x - y) / max(abs(x), abs(y)))
            last_digit += abs(x - y) > RTOL * max(abs(x), abs(y))
    print(f"{len(ma)} metric records {'identical' if exact else 'agree'} (max rel diff {worst:.3g}"
          f"{f', {last_digit} differ only in the last printed digit' if last_digit else ''})")
elif cmd == "weights":
    optim = "--optim" in sys.argv
    ta, tb = load_ckpt(a, optim), load_ckpt(b, optim)
    assert set(ta) == set(tb), f"tensor names differ: {sorted(set(ta) ^ set(tb))[:5]}"
    worst, where = 0.0, None
    for n in sorted(ta):
        x, y = ta[n], tb[n]
        assert x.shape == y.shape and x.dtype == y.dtype, f"{n}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
        if exact:
            assert x.tobytes() == y.tobytes(), f"{n} differs"
            continue
        # Relative to the tensor's scale, not element by element: some elements sit at round-off
        # level (the attention key bias has an exactly zero gradient in exact arithmetic, so its
        # values are rounding noise ~1e-16 whose sign depends on the reduction order).
        d = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)), initial=0.0))
        scale = float(np.max(np.abs(x.astype(np.float64)), initial=0.0))
        rel = d / scale if scale > 0 else (0.0 if d == 0 else math.inf)
        if rel > worst:
            worst, where = rel, n
    assert worst <= RTOL, f"{where}: max rel diff {worst:.3g} > {RTOL}"
    what = "optimizer moments" if optim else "weights"
    how = "identical" if exact else "agree (max rel diff %.3g%s)" % (worst, " in " + where if where else "")
    print(f"{len(ta)} {what} tensors {how}")
PY
export SRC
check() { "$PY" check.py "$@"; }

case $CASE in
equiv_*)
  # The same global batch of 8 sequences on 1, 2 and 4 ranks (train.batch_size is per rank).
  arch=${CASE#equiv_}
  balance=()
  if [[ $arch == balance ]]; then  # issue 16: sigmoid scores, expert biases by global loads, sequence loss
    arch=moe
    balance=(--set moe.score=sigmoid --set moe.aux_loss_coef=0 --set moe.seq_aux_loss_coef=0.01
             --set moe.expert_bias.enabled=true --set moe.expert_bias.update_rate=0.002)
  fi
  common=("${TINY[@]}" --set model.arch="$arch" --set train.dtype=float64 --set train.grad_accum=2
          --set train.max_steps=6 --set train.eval_every=3 --set optim.lr=3e-3 --set optim.warmup_steps=2
          --set checkpoint.every=0 "${balance[@]}")
  [[ $arch != dense ]] && common+=("${MOE[@]}")
  # capacity_factor 0.5 drops tokens; the capacity must not depend on how the batch is split.
  [[ $arch == moe ]] && common+=(--set moe.capacity_factor=0.5)
  for w in 1 2 4; do
    run_w $w w$w.log "${common[@]}" --set train.batch_size=$(( 8 / w )) --set train.out_dir="$WORK/w$w" ||
      { tail -30 w$w.log; fail "$w-rank run failed"; }
  done
  if [[ $arch == moe ]]; then
    grep -q '"moe_drop_frac":0\.[0-9]*[1-9]' w1/metrics.jsonl || fail "capacity_factor 0.5 dropped no tokens"
    echo "capacity_factor 0.5: moe_drop_frac per step $(grep -o '"moe_drop_frac":[0-9.e-]*' w1/metrics.jsonl | cut -d: -f2 | tr '\n' ' ')"
  fi
  ck=checkpoints/step_00000006
  for w in 2 4; do
    echo -n "$w ranks vs 1: " && check metrics w1/metrics.jsonl w$w/metrics.jsonl || fail "$w-rank metrics differ from 1 rank"
    echo -n "$w ranks vs 1: " && check weights w1/$ck w$w/$ck || fail "$w-rank final weights differ from 1 rank"
    echo -n "$w ranks vs 1: " && check weights w1/$ck w$w/$ck --optim || fail "$w-rank optimizer state differs from 1 rank"
  done
  [[ -f w4/$ck/optim-rank00003-of-00004.safetensors ]] || fail "4-rank checkpoint lacks rank 3's optimizer file"
  if [[ ${#balance[@]} -gt 0 ]]; then
    # The biases follow the global loads: the same on every world size (compared above with the
    # weights) and really moved.
    "$PY" - w1/$ck/model.safetensors <<'PY' || fail "expert biases missing or never updated"
import os, sys
sys.path.insert(0, os.path.join(os.environ["SRC"], "tests", "torch_ref"))
import st
t, _ = st.read(sys.argv[1])
b = {n: a for n, a in t.items() if n.endswith(".moe.expert_bias")}
assert b, "no expert_bias tensor in model.safetensors"
for n, a in b.items():
    assert abs(a).max() > 1e-4, f"{n} = {a}: the biases never moved"
    print(f"{n}: {[round(float(x), 4) for x in a]}")
PY
    grep -q '"moe[0-9]*_seq_aux":[0-9]' w1/metrics.jsonl || fail "no moe<l>_seq_aux metric"
  fi
  echo "equivalence ($arch): 1, 2, 4 ranks agree within 1e-9 relative (float64; only the reduction order differs)"
  ;;
peer_wait)
  # The MoE All-to-Alls over Gloo, through shared memory (comm.transport auto on one host), and through
  # shared memory with comm.measure_peer_wait's barrier before each exchange: the same training (weights
  # byte for byte). The shared-memory transport splits each exchange's time into waiting for the slowest
  # rank and the transfer without a barrier; Gloo alone cannot (no such fields).
  common=("${TINY[@]}" "${MOE[@]}" --set model.arch=scmoe --set train.batch_size=4 --set train.max_steps=5
          --set train.eval_every=0 --set checkpoint.every=0 --set comm.simulate_link.bandwidth_gb_s=2)
  run_w 2 gloo.log "${common[@]}" --set comm.transport=gloo --set train.out_dir="$WORK/gloo" ||
    { tail -30 gloo.log; fail "run over gloo failed"; }
  run_w 2 shm.log "${common[@]}" --set train.out_dir="$WORK/shm" || { tail -30 shm.log; fail "run failed"; }
  run_w 2 on.log "${common[@]}" --set comm.measure_peer_wait=true --set train.out_dir="$WORK/on" ||
    { tail -30 on.log; fail "run with comm.measure_peer_wait failed"; }
  grep -q "MoE All-to-Alls over gloo" gloo.log || fail "comm.transport gloo not in the log: $(grep 'process group' gloo.log)"
  grep -q "MoE All-to-Alls through shared memory" shm.log ||
    fail "comm.transport auto did not take shared memory on one host: $(grep 'process group' shm.log)"
  for run in shm on; do
    cmp gloo/checkpoints/step_00000005/model.safetensors $run/checkpoints/step_00000005/model.safetensors ||
      fail "the $run run's weights differ from the gloo run's"
    grep -q "peer wait .* ms (exposed .*), transfer overlap" $run.log || fail "no peer wait in $run's step line: $(tail -3 $run.log)"
  done
  "$PY" - gloo/metrics.jsonl shm/metrics.jsonl on/metrics.jsonl <<'PY' || fail "peer wait figures inconsistent"
import json, sys
gloo, shm, on = ([r for r in map(json.loads, open(f)) if "comm_ms" in r] for f in sys.argv[1:])
assert gloo and all("peer_wait_ms" not in r for r in gloo), "peer wait fields over gloo without comm.measure_peer_wait"
for name, runs in (("shm", shm), ("barrier", on)):
    assert len(runs) == len(gloo), name
    for r in runs:
        assert 0 <= r["peer_wait_ms"] <= r["comm_ms"] + 1e-6, r
        assert 0 <= r["exposed_peer_wait_ms"] <= r["exposed_comm_ms"] + 1e-3, r
        assert 0 <= r["transfer_overlap"] <= 1, r
    print(f"{name}: peer wait per step (ms):", " ".join(f"{r['peer_wait_ms']:.2f}/{r['comm_ms']:.2f}" for r in runs))
PY
  ;;
pipeline_2ranks)
  # Chunked pipelining on 2 ranks (fixed slots, each slot's used rows packed for the exchange, 3 chunks,
  # on the communication stream) against the unpipelined packed layout and one rank: the same training
  # (float64; expert gradients summed over chunks in another order), drops included.
  common=("${TINY[@]}" "${MOE[@]}" --set model.arch=moe --set moe.capacity_factor=0.5 --set train.dtype=float64
          --set train.max_steps=4 --set train.eval_every=4 --set checkpoint.every=0
          --set comm.simulate_link.bandwidth_gb_s=5)
  run_w 2 p1.log "${common[@]}" --set train.batch_size=4 --set train.out_dir="$WORK/p1" || { tail -30 p1.log; fail "P=1 run failed"; }
  run_w 2 p3.log "${common[@]}" --set train.batch_size=4 --set moe.pipeline_degree=3 --set train.out_dir="$WORK/p3" ||
    { tail -30 p3.log; fail "P=3 run failed"; }
  run_w 1 w1.log "${common[@]}" --set train.batch_size=8 --set moe.pipeline_degree=3 --set train.out_dir="$WORK/w1" ||
    { tail -30 w1.log; fail "1-rank P=3 run failed"; }
  grep -q '"moe_drop_frac":0\.[0-9]*[1-9]' p3/metrics.jsonl || fail "capacity_factor 0.5 dropped no tokens"
  ck=checkpoints/step_00000004
  echo -n "P=3 vs P=1 (2 ranks): " && check metrics p1/metrics.jsonl p3/metrics.jsonl || fail "pipelined metrics differ"
  echo -n "P=3 vs P=1 (2 ranks): " && check weights p1/$ck p3/$ck || fail "pipelined weights differ"
  echo -n "2 ranks vs 1 (P=3): " && check metrics w1/metrics.jsonl p3/metrics.jsonl || fail "2-rank pipelined metrics differ from 1 rank"
  ;;
balanced_routing)
  # moe.force_balanced_routing (benchmarks): random router logits keep every expert's load near the mean
  # and the gate learns nothing, so between two checkpoints a gate weight only decays: step 4's is
  # step 1's times one scalar. The same run with learned routing changes its gates freely.
  common=("${TINY[@]}" --set moe.num_experts=4 --set model.arch=scmoe --set train.batch_size=8 --set train.max_steps=4
          --set train.eval_every=0 --set checkpoint.every=1 --set checkpoint.keep=10 --set optim.weight_decay=0.1)
  run_w 2 bal.log "${common[@]}" --set moe.force_balanced_routing=true --set train.out_dir="$WORK/bal" ||
    { tail -30 bal.log; fail "run with moe.force_balanced_routing failed"; }
  run_w 2 learned.log "${common[@]}" --set train.out_dir="$WORK/learned" || { tail -30 learned.log; fail "run failed"; }
  SRC=$SRC "$PY" - bal learned <<'PY' || fail "balanced routing"
import json, os, sys
sys.path.insert(0, os.path.join(os.environ["SRC"], "tests", "torch_ref"))
import numpy as np
import st
def gates(run, step):
    t, _ = st.read(f"{run}/checkpoints/step_{step:08d}/model.safetensors")
    return {n: a.astype(np.float64) for n, a in t.items() if n.endswith(".gate.weight")}
def worst_decay_misfit(run):  # max over gates of |g4 - c g1| / max |g4|, c fitted by least squares
    g1, g4 = gates(run, 1), gates(run, 4)
    assert g1 and g1.keys() == g4.keys(), (run, list(g1))
    out = 0.0
    for n in g1:
        c = float((g1[n] * g4[n]).sum() / (g1[n] * g1[n]).sum())
        out = max(out, float(np.abs(g4[n] - c * g1[n]).max() / np.abs(g4[n]).max()))
    return out
bal = [r for r in map(json.loads, open("bal/metrics.jsonl")) if "moe_load_max" in r]
loads = [r["moe_load_max"] for r in bal]
print("forced balance: moe_load_max per step", " ".join(f"{x:.3f}" for x in loads))
assert len(bal) == 4 and max(loads) < 1.3, loads
b, l = worst_decay_misfit("bal"), worst_decay_misfit("learned")
print(f"gate weights step 4 vs a multiple of step 1: misfit {b:.2e} forced, {l:.2e} learned")
assert b < 1e-5 and l > 3e-4, (b, l)
PY
  ;;
resume_2ranks)
  # 8 steps straight == 4 steps, then resume for 4 (the schedule's horizon fixed by optim.decay_steps).
  common=("${TINY[@]}" "${MOE[@]}" --set model.arch=scmoe --set train.batch_size=4 --set train.grad_accum=2
          --set optim.decay_steps=8 --set optim.warmup_steps=2 --set train.eval_every=4 --set checkpoint.every=0)
  run_w 2 a.log "${common[@]}" --set train.max_steps=8 --set train.out_dir="$WORK/a" || { tail -30 a.log; fail "straight run failed"; }
  run_w 2 b1.log "${common[@]}" --set train.max_steps=4 --set train.out_dir="$WORK/b" || { tail -30 b1.log; fail "first half failed"; }
  run_w 2 b2.log "${common[@]}" --set train.max_steps=8 --set train.out_dir="$WORK/b" --resume auto ||
    { tail -30 b2.log; fail "resumed half failed"; }
  grep -q "resumed from .*step_00000004 at step 4" b2.log || fail "second half did not resume from step 4"
  ck=checkpoints/step_00000008
  [[ $(ls a/$ck) == $(ls b/$ck) ]] || fail "file lists differ: $(ls a/$ck) vs $(ls b/$ck)"
  for f in a/$ck/*; do
    [[ ${f##*/} == config.yaml ]] && continue  # differs in train.out_dir only; checked below
    cmp "$f" "b/$ck/${f##*/}" || fail "${f##*/} differs after resume"
  done
  diff <(grep -v '^  out_dir: ' a/$ck/config.yaml) <(grep -v '^  out_dir: ' b/$ck/config.yaml) ||
    fail "config.yaml differs after resume (beyond train.out_dir)"
  check metrics a/metrics.jsonl b/metrics.jsonl --exact || fail "losses differ between straight and resumed runs"
  echo "bit-exact resume on 2 ranks: $(( $(ls a/$ck | wc -l) - 1 )) checkpoint files byte-identical (config.yaml: all but train.out_dir)"
  ;;
reshard_errors)
  run_w 2 t.log "${TINY[@]}" "${MOE[@]}" --set model.arch=scmoe --set train.batch_size=4 --set train.max_steps=2 \
    --set train.out_dir="$WORK/t" || { tail -30 t.log; fail "training failed"; }
  ck=t/checkpoints/step_00000002
  expect_error() {  # expect_error "needle" reshard-args...
    local needle=$1
    shift
    if "$PY" "$RESHARD" "$@" >out.txt 2>err.txt; then fail "reshard succeeded for: $*"; fi
    grep -qF -- "$needle" err.txt || fail "error for '$*' lacks '$needle': $(cat err.txt)"
    echo "  $(head -c 300 err.txt | head -1)"
  }
  expect_error "moe.num_experts 4 is not divisible by 3" "$ck" o3 --world-size 3
  [[ ! -e o3 ]] || fail "a failed re-shard left its destination behind"
  mkdir o2 && expect_error "already exists" "$ck" o2 --world-size 2 && rmdir o2
  expect_error "does not exist" nowhere o2 --world-size 2
  expect_error "pass one checkpoint" t o2 --world-size 2
  cp -r "$ck" inc && rm inc/COMPLETE
  expect_error "no COMPLETE marker" inc o2 --world-size 2
  cp -r "$ck" miss && rm miss/experts-rank00001-of-00002.safetensors
  expect_error "lacks experts-rank00001-of-00002.safetensors" miss o2 --world-size 2
  cp -r "$ck" .tmp-step_00000002
  expect_error "never finished" .tmp-step_00000002 o2 --world-size 2
  cp -r "$ck" trunc && truncate -s -100 trunc/optim-rank00001-of-00002.safetensors
  expect_error "optim-rank00001-of-00002.safetensors" trunc o2 --world-size 2
  # Replicated moments that differ between ranks mean the ranks were out of sync: abort by default.
  cp -r "$ck" skew
  "$PY" - skew/optim-rank00001-of-00002.safetensors <<'PY'
import os, sys
sys.path.insert(0, os.path.join(os.environ["SRC"], "tests", "torch_ref"))
import st
t, md = st.read(sys.argv[1])
t["m.wte"][0, 0] += 1e-3
st.write(sys.argv[1], t, md)
PY
  expect_error "differ between ranks" skew o2 --world-size 2
  "$PY" "$RESHARD" skew o2 --world-size 2 --allow-optim-mismatch >out.txt 2>err.txt || fail "--allow-optim-mismatch: $(cat err.txt)"
  grep -q "warning" err.txt || fail "no warning with --allow-optim-mismatch"
  compgen -G ".tmp-reshard*" >/dev/null && fail "temporary directory left behind"
  [[ -f o2/COMPLETE ]] || fail "no COMPLETE in the re-sharded checkpoint"
  echo "re-shard errors: all reported clearly, nothing left behind"
  ;;
reshard_*)
  # Train on F ranks, re-shard the checkpoint to T ranks and continue; compare with continuing on F.
  spec=${CASE#reshard_}
  arch=scmoe
  if [[ $spec == dense_* ]]; then arch=dense spec=${spec#dense_}; fi
  from=${spec%to*} to=${spec#*to}
  common=("${TINY[@]}" --set model.arch="$arch" --set train.dtype=float64 --set train.grad_accum=2
          --set optim.decay_steps=6 --set optim.lr=3e-3 --set optim.warmup_steps=2 --set train.eval_every=2
          --set checkpoint.every=0)
  # ScMoE with expert biases: the re-shard tool carries them (model.safetensors) to the new world size.
  [[ $arch != dense ]] && common+=("${MOE[@]}" --set moe.expert_bias.enabled=true --set moe.expert_bias.update_rate=0.002)
  bs_from=$(( 8 / from )) bs_to=$(( 8 / to ))
  run_w "$from" a1.log "${common[@]}" --set train.batch_size=$bs_from --set train.max_steps=4 --set train.out_dir="$WORK/a" ||
    { tail -30 a1.log; fail "first 4 steps on $from ranks failed"; }
  src_ck=a/checkpoints/step_00000004
  # Into the new run's checkpoints directory, so that --resume auto finds it.
  "$PY" "$RESHARD" "$src_ck" b/checkpoints/step_00000004 --world-size "$to" >reshard.log 2>&1 ||
    { cat reshard.log; fail "re-sharding $from -> $to failed"; }
  cat reshard.log
  # Without re-sharding, the other world size is refused with a pointer to the tool.
  if [[ $from != "$to" ]]; then
    if run_w "$to" wrong.log "${common[@]}" --set train.batch_size=$bs_to --set train.max_steps=6 \
         --set train.out_dir="$WORK/c" --resume "$WORK/$src_ck"; then
      fail "resuming a $from-rank checkpoint on $to ranks without re-sharding succeeded"
    fi
    grep -q "Re-shard it" wrong.log && grep -q "different number of ranks" wrong.log && grep -q "this run has $to" wrong.log ||
      fail "unclear error for a world-size mismatch on resume: $(grep -i error wrong.log | head -3)"
  fi
  run_w "$from" a2.log "${common[@]}" --set train.batch_size=$bs_from --set train.max_steps=6 --set train.out_dir="$WORK/a" \
    --resume auto || { tail -30 a2.log; fail "continuing on $from ranks failed"; }
  run_w "$to" b.log "${common[@]}" --set train.batch_size=$bs_to --set train.max_steps=6 --set train.out_dir="$WORK/b" \
    --resume auto || { tail -30 b.log; fail "continuing on $to ranks after re-sharding failed"; }
  grep -q "resumed from .*step_00000004 at step 4" b.log || fail "the $to-rank run did not resume from the re-sharded checkpoint"
  echo -n "continued on $to vs $from ranks: " && check metrics a/metrics.jsonl b/metrics.jsonl --from 5 ||
    fail "losses after re-sharding differ"
  echo -n "final weights: " && check weights a/checkpoints/step_00000006 b/checkpoints/step_00000006 ||
    fail "final weights after re-sharding differ"
  echo -n "final optimizer state: " && check weights a/checkpoints/step_00000006 b/checkpoints/step_00000006 --optim ||
    fail "final optimizer state after re-sharding differs"
  echo "re-shard $from -> $to ($arch): same losses and weights within 1e-9 relative (float64)"
  ;;
world_mismatch_error)
  # 4 experts cannot be split evenly over 3 ranks: every rank must say so, before training.
  if run_w 3 log.txt "${TINY[@]}" "${MOE[@]}" --set model.arch=moe --set train.batch_size=2 --set train.max_steps=2 \
       --set train.out_dir="$WORK/run"; then
    fail "num_experts 4 on 3 ranks succeeded"
  fi
  grep -qE 'error: .*moe\.num_experts.*world size.*3|error: .*world size.*3.*moe\.num_experts' log.txt ||
    fail "error does not name moe.num_experts and the world size 3: $(grep -i error log.txt | head -3)"
  grep -q "launch: exiting with status [1-9]" log.txt || fail "launcher did not exit non-zero"
  [[ ! -e run/metrics.jsonl ]] || fail "training started despite the mismatch"
  echo "num_experts 4 on 3 ranks refused before training, naming moe.num_experts and the world size"
  ;;
config_mismatch)
  # Issue 15, case 3: ranks started with different configurations fail at the rendezvous, naming the
  # first key that differs and each rank's value (a learning rate would otherwise drift silently; a
  # layer count would fail only at the communicator's timeout).
  cat >per_rank.sh <<EOF
#!/usr/bin/env bash
# rank 1 gets its own value of the key in \$PER_RANK_KEY
extra=()
[[ \$RANK == 1 ]] && extra=(--set "\$PER_RANK_KEY")
exec "$TRAIN" "\$@" "\${extra[@]}"
EOF
  chmod +x per_rank.sh
  for kv in optim.lr=0.002 model.n_layer=3 train.seed=7; do
    T0=$(now_ms)
    if PER_RANK_KEY=$kv timeout -k 10 150 python3 "$LAUNCH" --nproc-per-node 2 --master-port 0 -- ./per_rank.sh \
         "${TINY[@]}" --set train.batch_size=2 --set train.max_steps=3 --set train.out_dir="$WORK/run" >log.txt 2>&1; then
      fail "ranks with different ${kv%%=*} trained"
    fi
    ms=$(( $(now_ms) - T0 ))
    grep -q "error: the ranks' configurations differ: ${kv%%=*} is .* on rank 0, ${kv#*=}\(\.0*\)\? on rank 1" log.txt ||
      fail "error does not name ${kv%%=*} and both values: $(grep error log.txt | head -2)"
    grep -q "^\[rank 0\] step" log.txt && fail "training started with different ${kv%%=*}"
    (( ms < 15000 )) || fail "the mismatch took $ms ms to report (a timeout, not the rendezvous check)"
    echo "${kv%%=*} differing: refused in $ms ms: $(grep -m1 -o "configurations differ: [^(]*" log.txt)"
  done
  # Keys that may differ per rank do not stop the run.
  PER_RANK_KEY=train.log_every=2 timeout -k 10 150 python3 "$LAUNCH" --nproc-per-node 2 --master-port 0 -- \
    ./per_rank.sh "${TINY[@]}" --set train.batch_size=2 --set train.max_steps=2 --set train.out_dir="$WORK/ok" \
    >ok.txt 2>&1 || { cat ok.txt; fail "train.log_every differing per rank was refused"; }
  ;;
hung_rank)
  # Issue 15, case 7: a rank that hangs (SIGSTOP) is named by the ranks that time out waiting for it.
  start_launcher --nproc-per-node 2 --master-port 0 -- "$TRAIN" "${TINY[@]}" --set train.batch_size=2 \
    --set train.max_steps=100000 --set train.eval_every=0 --set checkpoint.every=0 --set comm.timeout_s=4 \
    --set train.out_dir="$WORK/run"
  wait_for 60 "$WORK/run/metrics.jsonl"
  signal_rank STOP 1
  finish_launcher 60 "$T0"
  kill -KILL "$victim" 2>/dev/null || true
  [[ $RC != 0 ]] || fail "the launcher exited 0 with a hung rank"
  grep -q "\[rank 0\] error: .* failed: .*(timeout 4 s); rank(s) 1 show no sign of life" err.txt ||
    fail "rank 0's error does not name rank 1 as hung: $(grep error err.txt | head -2)"
  grep -q "launch: ranks 1 are stopped (SIGSTOP or a debugger) and cannot act on SIGTERM; sent SIGKILL" err.txt ||
    fail "the launcher did not kill the stopped rank at once: $(grep launch: err.txt)"
  echo "SIGSTOP to rank 1: $(grep -m1 -o 'rank(s) 1 show no sign of life[^[]*' err.txt), launcher exit $RC after $ELAPSED_MS ms"
  ;;
rank_killed)
  # SIGKILL one rank once a checkpoint exists: the launcher must stop the other rank within seconds,
  # exit 128+9 naming rank 1, and --resume auto must continue from the last complete checkpoint.
  common=("${TINY[@]}" "${MOE[@]}" --set model.arch=scmoe --set train.batch_size=4 --set train.eval_every=0
          --set checkpoint.every=2 --set checkpoint.keep=100 --set train.out_dir="$WORK/run")
  start_launcher --nproc-per-node 2 --master-port 0 -- "$TRAIN" "${common[@]}" --set train.max_steps=100000
  wait_for 60 "run/checkpoints/step_*/COMPLETE"
  signal_rank KILL 1
  finish_launcher 30 "$T0"
  echo "launcher exited with status $RC $ELAPSED_MS ms after SIGKILL to rank 1 (pid $victim):"
  grep '^launch:' err.txt
  no_rank_left
  (( ELAPSED_MS <= 15000 )) || fail "launcher took $ELAPSED_MS ms to tear the job down (expected a few seconds)"
  [[ $RC -ne 0 ]] || fail "launcher exited 0 after a rank was killed"
  if compgen -G "run/checkpoints/.tmp-*" >/dev/null; then echo "(a checkpoint was being written when rank 1 died)"; fi
  last=$(last_complete run)
  # Leftovers of interrupted checkpoints must never be resumed from (simulated, with higher steps).
  cp -r "run/checkpoints/$(printf 'step_%08d' "$last")" run/checkpoints/.tmp-step_99999999
  cp -r "run/checkpoints/$(printf 'step_%08d' "$last")" run/checkpoints/step_99999998
  rm run/checkpoints/step_99999998/COMPLETE
  run_w 2 resume.log "${common[@]}" --set train.max_steps=$(( last + 2 )) --resume auto ||
    { tail -30 resume.log; fail "resume after SIGKILL failed"; }
  grep -q "resumed from $WORK/run/checkpoints/$(printf 'step_%08d' "$last") at step $last" resume.log ||
    fail "did not resume from the last complete checkpoint (step $last): $(grep -i resum resume.log)"
  grep -q "launch: rank 1 killed by signal SIGKILL$" err.txt && [[ $RC -eq 137 ]] ||
    fail "launcher blamed the wrong rank: expected 'launch: rank 1 killed by signal SIGKILL' and status 137, got status $RC and: $(grep '^launch: rank' err.txt | head -1)"
  echo "SIGKILL to rank 1 -> launcher status $RC in $ELAPSED_MS ms, no ranks left; resumed from step $last"
  ;;
rank_exit1)
  # A rank's process exits 1 mid-run. No trainer code path makes exactly one rank exit 1 (errors exit 2,
  # and divergence, the only status-1 path, is detected by all ranks together; a rank-local error also
  # makes its peers fail within milliseconds, which rank_killed covers). So rank 1 runs through a
  # wrapper that starts train as a child and, once the run has a complete checkpoint, exits 1 itself,
  # leaving its trainer running in rank 1's process group. Nothing else fails, so the launcher must name
  # rank 1 and exit 1; its SIGTERM to every rank's process group reaches rank 0 and rank 1's trainer,
  # which agree, write a checkpoint and exit 143; no process may be left; --resume auto continues.
  # (A frozen trainer would test a peer hung in a collective, but SIGSTOP does not survive the
  # wrapper's exit: the kernel sends SIGHUP + SIGCONT to a newly orphaned group with stopped members.)
  cat >rank1_exits.sh <<'SH'
#!/usr/bin/env bash
[[ $RANK == 1 ]] || exec "$@"
"$@" &
child=$!
until compgen -G "$CKPT_GLOB" >/dev/null; do
  kill -0 $child 2>/dev/null || exit 3
  sleep 0.05
done
echo "rank1_exits.sh: exiting 1, train (pid $child) left running" >&2
exit 1
SH
  common=("${TINY[@]}" "${MOE[@]}" --set model.arch=scmoe --set train.batch_size=4 --set train.eval_every=0
          --set checkpoint.every=2 --set checkpoint.keep=100 --set train.out_dir="$WORK/run")
  export CKPT_GLOB="$WORK/run/checkpoints/step_*/COMPLETE"
  T0=$(now_ms)
  start_launcher --nproc-per-node 2 --master-port 0 -- bash rank1_exits.sh "$TRAIN" "${common[@]}" \
    --set train.max_steps=100000
  finish_launcher 90 "$T0"
  grep '^launch:' err.txt
  no_rank_left
  grep -q "rank1_exits.sh: exiting 1" err.txt || fail "rank 1's wrapper did not act: $(grep error err.txt | head -3)"
  grep -q "^launch: rank 1 exited with status 1$" err.txt ||
    fail "launcher did not report rank 1's exit status 1: $(grep '^launch: rank' err.txt | head -1)"
  [[ $RC -eq 1 ]] || fail "launcher exited $RC, expected rank 1's status 1"
  grep -q "^launch: rank 0 exited with status 143 (while stopping)$" err.txt ||
    fail "rank 0 did not stop with a checkpoint (143) after the launcher's SIGTERM: $(grep -E '^launch: rank 0|error' err.txt)"
  grep -q "stopped by signal 15 at step" out.txt || fail "rank 0 did not log the stop"
  compgen -G "run/checkpoints/.tmp-*" >/dev/null && fail "temporary checkpoint left behind"
  last=$(last_complete run)
  run_w 2 resume.log "${common[@]}" --set train.max_steps=$(( last + 2 )) --resume auto ||
    { tail -30 resume.log; fail "resume after the failed rank failed"; }
  grep -q "resumed from $WORK/run/checkpoints/$(printf 'step_%08d' "$last") at step $last" resume.log ||
    fail "did not resume from the last complete checkpoint (step $last)"
  echo "rank 1 exited 1 -> launcher status 1 in $ELAPSED_MS ms, the rest checkpointed at step $last and exited 143, no processes left; resumed"
  ;;
launcher_sigterm)
  # SIGTERM to the launcher: forwarded to both ranks, which agree, write one checkpoint and exit 143.
  common=("${TINY[@]}" "${MOE[@]}" --set model.arch=scmoe --set train.batch_size=4 --set train.eval_every=0
          --set checkpoint.every=0 --set train.out_dir="$WORK/run")
  start_launcher --nproc-per-node 2 --master-port 0 -- "$TRAIN" "${common[@]}" --set train.max_steps=100000
  T0=$(now_ms)
  until grep -q "^\[rank 0\] step     3/" out.txt; do
    (( $(now_ms) < T0 + 60000 )) || fail "no step 3 within 60 s"
    kill -0 "$LPID" 2>/dev/null || { cat err.txt; fail "launcher exited early"; }
    sleep 0.05
  done
  T0=$(now_ms)
  kill -TERM "$LPID"
  finish_launcher 30 "$T0"
  grep '^launch:' err.txt
  no_rank_left
  [[ $RC -eq 143 ]] || fail "launcher exited $RC, expected 143"
  for r in 0 1; do
    grep -q "^launch: rank $r exited with status 143 (while stopping)$" err.txt || fail "rank $r did not exit 143"
  done
  ckpts=(run/checkpoints/step_*)
  [[ ${#ckpts[@]} -eq 1 && -f ${ckpts[0]}/COMPLETE ]] || fail "expected exactly one complete checkpoint, got: ${ckpts[*]}"
  for f in model.safetensors config.yaml {experts,optim}-rank0000{0,1}-of-00002.safetensors; do
    [[ -f ${ckpts[0]}/$f ]] || fail "${ckpts[0]} lacks $f"
  done
  compgen -G "run/checkpoints/.tmp-*" >/dev/null && fail "temporary checkpoint left behind"
  grep -q "stopped by signal 15 at step" out.txt || fail "rank 0 did not log the stop"
  step=$(( 10#${ckpts[0]##*step_} ))
  run_w 2 resume.log "${common[@]}" --set train.max_steps=$(( step + 2 )) --resume auto ||
    { tail -30 resume.log; fail "resume after SIGTERM failed"; }
  grep -q "resumed from .*step_$(printf '%08d' "$step") at step $step" resume.log || fail "did not resume from step $step"
  echo "SIGTERM -> both ranks checkpointed at step $step and exited 143, launcher 143 in $ELAPSED_MS ms; resumed"
  ;;
*)
  fail "unknown case"
  ;;
esac
