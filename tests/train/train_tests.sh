#!/usr/bin/env bash
# End-to-end tests of the `train` binary (registered in tests/train/train.cmake):
#   train_tests.sh TRAIN_BIN SOURCE_DIR CASE
# Each case works in its own scratch directory and fails with a message saying what was expected.
set -euo pipefail
TRAIN=$1 SRC=$2 CASE=$3
PREFIX=train_test
# shellcheck source=tests/e2e_common.sh
source "$SRC/tests/e2e_common.sh"

TINY=(--set model.n_layer=2 --set model.d_model=64 --set model.n_head=4 --set model.d_ff=256
      --set model.seq_len=64 --set train.batch_size=8 --set train.log_every=1 --set train.eval_batches=4
      --set "data.train=$DATA/train_*.bin" --set "data.val=$DATA/val_*.bin" --set train.threads=1  # ctest runs two cases at once on 2 cores
      --set train.device=cpu)  # the CPU backend's behaviour, also on a machine with a GPU (auto would take it)

PY=python3
"$PY" -c 'import numpy' 2>/dev/null || PY=/usr/bin/python3  # the checkpoint tools need numpy

# train_in_background LOG STEP args...: starts `train args` (output to LOG) and returns once it has
# logged step STEP (or after 10 s); its pid is in BG_PID.
train_in_background() {
  local log=$1 step=$2
  shift 2
  "$TRAIN" "$@" >"$log" 2>&1 &
  BG_PID=$!
  for _ in $(seq 200); do grep -q "^step *$step/" "$log" 2>/dev/null && break; sleep 0.05; done
}

val_of() { grep -o '"val_loss":[0-9.e+-]*' "$1/metrics.jsonl" | tail -1 | cut -d: -f2; }

case $CASE in
learns)
  # Validation loss must fall well below the byte unigram entropy of the text (3.31 nats): by 0.5.
  "$TRAIN" "${TINY[@]}" --set train.max_steps=200 --set optim.lr=3e-3 --set optim.warmup_steps=20 \
    --set train.eval_every=100 --set train.out_dir=run >log.txt 2>&1 || { cat log.txt; fail "training failed"; }
  v=$(val_of run)
  echo "final val_loss $v (unigram entropy 3.31)"
  python3 -c "import sys; sys.exit(0 if $v < 2.8 else 1)" || fail "val_loss $v not below 2.8"
  ;;
resume_*)
  # N steps straight == N/2 steps, then resume for N/2: identical weights, optimizer state and losses.
  arch=${CASE#resume_}
  extra=(--set model.arch=$arch --set moe.num_experts=4 --set moe.gate_noise=true --set train.grad_accum=2)
  [[ $arch == dense ]] && extra=(--set train.grad_accum=2)
  # balance: issue 16's balancing (sigmoid scores, expert biases outside the optimizer, sequence loss)
  [[ $arch == balance ]] && extra=(--set model.arch=moe --set moe.num_experts=4 --set train.grad_accum=2
    --set moe.score=sigmoid --set moe.aux_loss_coef=0 --set moe.seq_aux_loss_coef=0.01
    --set moe.expert_bias.enabled=true --set moe.expert_bias.update_rate=0.002)
  common=("${TINY[@]}" "${extra[@]}" --set optim.decay_steps=8 --set optim.warmup_steps=2 --set train.eval_every=4)
  "$TRAIN" "${common[@]}" --set train.max_steps=8 --set checkpoint.every=0 --set train.out_dir=a >a.log 2>&1 ||
    { cat a.log; fail "straight run failed"; }
  "$TRAIN" "${common[@]}" --set train.max_steps=4 --set checkpoint.every=0 --set train.out_dir=b >b1.log 2>&1 ||
    { cat b1.log; fail "first half failed"; }
  "$TRAIN" "${common[@]}" --set train.max_steps=8 --set checkpoint.every=0 --set train.out_dir=b --resume auto \
    >b2.log 2>&1 || { cat b2.log; fail "resumed half failed"; }
  grep -q "resumed from" b2.log || fail "second half did not resume"
  # Every weight, expert and optimizer file (config.yaml differs only in train.out_dir).
  n=0
  for f in a/checkpoints/step_00000008/*.safetensors; do
    cmp "$f" "b/checkpoints/step_00000008/$(basename "$f")" || fail "$(basename "$f") differs after resume"
    n=$((n + 1))
  done
  [[ $n -ge 2 ]] || fail "expected model + optimizer files, found $n"
  python3 - a/metrics.jsonl b/metrics.jsonl <<'PY' || fail "losses differ between straight and resumed runs"
import json, sys
def losses(p):
    out = {}
    for line in open(p):
        r = json.loads(line)
        for k in ("loss", "val_loss", "grad_norm", "aux_loss"):
            if k in r: out[(r["step"], k)] = r[k]
    return out
a, b = losses(sys.argv[1]), losses(sys.argv[2])
assert a and a == b, f"{len(a)} vs {len(b)} records; first difference: " + str(next(((k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)), None))
print(f"{len(a)} loss records identical")
PY
  if [[ $arch == balance ]]; then
    # The biases are in the checkpoint and were restored (the byte comparison above includes them);
    # eval-only routes with them (its val_loss is training's), and they matter (zeroed, it differs).
    out=$("$TRAIN" "${common[@]}" --set train.out_dir=b --eval-only --resume b/checkpoints/step_00000008 2>&1)
    v=$(echo "$out" | tail -1 | cut -d' ' -f2)
    [[ $v == $(python3 -c "print('%.6f' % $(val_of b))") ]] || fail "eval-only val_loss $v != training's $(val_of b)"
    mkdir -p z/checkpoints && cp -r b/checkpoints/step_00000008 z/checkpoints/
    SRC=$SRC "$PY" - z/checkpoints/step_00000008/model.safetensors <<'PY' || fail "could not zero the expert biases"
import os, sys
sys.path.insert(0, os.path.join(os.environ["SRC"], "tests", "torch_ref"))
import st
t, md = st.read(sys.argv[1])
names = [n for n in t if n.endswith(".moe.expert_bias")]
assert names, "no expert_bias tensor in model.safetensors"
assert all(abs(t[n]).max() > 1e-4 for n in names), "the expert biases never moved"
for n in names: t[n] = t[n] * 0
st.write(sys.argv[1], t, md)
PY
    out=$("$TRAIN" "${common[@]}" --set train.out_dir=z --eval-only --resume z/checkpoints/step_00000008 2>&1)
    vz=$(echo "$out" | tail -1 | cut -d' ' -f2)
    [[ $vz != "$v" ]] || fail "val_loss $v with and without the expert biases: they do not route"
    echo "eval-only with the checkpoint's biases: $v (training's); biases zeroed: $vz"
    # The option turned off or on over a checkpoint: each with a notice, never silently.
    "$TRAIN" "${common[@]}" --set moe.expert_bias.enabled=false --set train.out_dir=b --eval-only \
      --resume b/checkpoints/step_00000008 >off.log 2>&1 || { cat off.log; fail "eval-only with the biases off failed"; }
    grep -q "expert_bias is not used (moe.expert_bias.enabled is false)" off.log || fail "no notice of unused biases: $(cat off.log)"
    "$TRAIN" "${TINY[@]}" --set model.arch=moe --set moe.num_experts=4 --set train.max_steps=1 --set train.out_dir=nb \
      >nb.log 2>&1 || { cat nb.log; fail "run without biases failed"; }
    "$TRAIN" "${TINY[@]}" --set model.arch=moe --set moe.num_experts=4 --set moe.expert_bias.enabled=true \
      --set train.out_dir=nb --eval-only --resume nb/checkpoints/step_00000001 >on.log 2>&1 ||
      { cat on.log; fail "eval-only with the biases newly on failed"; }
    grep -q "holds no blocks.1.moe.expert_bias (written without moe.expert_bias): the bias starts at zero" on.log ||
      fail "no notice of biases starting at zero: $(cat on.log)"
  fi
  echo "bit-exact resume ($arch): weights, optimizer state and losses identical"
  ;;
eval_only)
  "$TRAIN" "${TINY[@]}" --set train.max_steps=3 --set train.out_dir=run >log.txt 2>&1 || { cat log.txt; fail "train"; }
  out=$("$TRAIN" "${TINY[@]}" --set train.out_dir=run --eval-only --resume run/checkpoints/step_00000003 2>&1)
  echo "$out" | tail -1 | grep -Eq '^val_loss [0-9]+\.[0-9]+$' || fail "no final 'val_loss <float>' line: $out"
  v=$(echo "$out" | tail -1 | cut -d' ' -f2)
  [[ $v == $(python3 -c "print('%.6f' % $(val_of run))") ]] || fail "eval-only val_loss $v != training's $(val_of run)"
  "$TRAIN" "${TINY[@]}" --set train.out_dir=run --eval-only 2>err.txt && fail "eval-only without --resume succeeded"
  grep -q "needs a checkpoint" err.txt || fail "unclear error: $(cat err.txt)"
  ;;
nan_stops)
  # A diverging run stops with a message and leaves the last checkpoint loadable.
  set +e
  "$TRAIN" "${TINY[@]}" --set train.max_steps=20 --set optim.lr=1e12 --set optim.warmup_steps=0 \
    --set optim.grad_clip=0 --set optim.min_lr=0 --set checkpoint.every=1 --set train.out_dir=run >log.txt 2>err.txt
  rc=$?
  set -e
  [[ $rc -ne 0 ]] || fail "diverging run exited 0"
  grep -q "loss is" err.txt || fail "no NaN/Inf message: $(cat err.txt)"
  last=$(ls -d run/checkpoints/step_* | tail -1)
  [[ -n $last ]] || fail "no checkpoint before the divergence"
  ls run/checkpoints | grep -q '^\.tmp' && fail "temporary checkpoint left behind"
  "$TRAIN" "${TINY[@]}" --set train.out_dir=run --eval-only --resume "$last" >/dev/null 2>&1 ||
    fail "last checkpoint $last is not loadable"
  echo "diverged with rc $rc, $(grep -o 'loss is [^;]*' err.txt); $last intact"
  ;;
sigterm)
  # SIGTERM: the run writes a checkpoint, exits 128+15, and resumes from it.
  train_in_background log.txt 3 "${TINY[@]}" --set train.max_steps=100000 --set checkpoint.every=0 \
    --set train.eval_every=0 --set train.out_dir=run
  pid=$BG_PID
  kill -TERM $pid
  set +e
  wait $pid
  rc=$?
  set -e
  [[ $rc -eq 143 ]] || { cat log.txt; fail "exit status $rc, expected 143"; }
  ckpt=$(ls -d run/checkpoints/step_* | tail -1)
  [[ -f $ckpt/COMPLETE ]] || fail "no complete checkpoint after SIGTERM"
  "$TRAIN" "${TINY[@]}" --set train.max_steps=$(( 10#${ckpt##*step_} + 2 )) --set train.out_dir=run --resume auto \
    >log2.txt 2>&1 || { cat log2.txt; fail "resume after SIGTERM failed"; }
  grep -q "resumed from" log2.txt || fail "did not resume"
  echo "SIGTERM -> checkpoint $ckpt, rc 143, resumed"
  ;;
bad_inputs)
  # Documented errors: each names the file/key and what was expected, and exits non-zero.
  expect_error() {  # expect_error "needle" train-args...
    local needle=$1
    shift
    if "$TRAIN" "$@" >out.txt 2>err.txt; then fail "expected failure for: $*"; fi
    grep -qF -- "$needle" err.txt || fail "error for '$*' lacks '$needle': $(cat err.txt)"
  }
  printf 'model:\n  d_modle: 64\n' >typo.yaml
  expect_error "did you mean 'model.d_model'" --config typo.yaml
  expect_error "typo.yaml" --config typo.yaml
  expect_error "model.n_layer" --set model.n_layer=abc
  expect_error "optim.lr" --set optim.lr=-1
  expect_error "missing.yaml" --config missing.yaml
  expect_error "unrecognised option" --bogus-flag || expect_error "unrecognized option" --bogus-flag
  # Corrupt data: wrong magic, truncated shard, token >= vocab.
  mkdir -p bad
  cp "$DATA/val_000000.bin" bad/val_000000.bin
  printf '\x00\x00\x00\x00' | dd of=bad/val_000000.bin conv=notrunc status=none
  expect_error "wrong magic" "${TINY[@]}" --set "data.val=bad/val_*.bin" --set train.out_dir=r1
  cp "$DATA/val_000000.bin" bad/val_000000.bin
  truncate -s -100 bad/val_000000.bin
  expect_error "truncated" "${TINY[@]}" --set "data.val=bad/val_*.bin" --set train.out_dir=r2
  expect_error ">= model.vocab_size" "${TINY[@]}" --set model.vocab_size=50 --set train.max_steps=1 --set train.out_dir=r3
  expect_error "data.train" "${TINY[@]}" --set "data.train=nowhere/*.bin" --set train.out_dir=r4
  # Issue 15, cases 5 and 7: a second YAML document, nesting past the parser's limit, a model larger
  # than the machine.
  printf 'model: {d_model: 64}\n---\ntrain: {seed: 2}\n' >two.yaml
  expect_error "two.yaml:3:1: a second YAML document (after '---')" --config two.yaml
  "$PY" -c "print('[' * 100000)" >deep.yaml
  expect_error "deep.yaml: YAML nested deeper than the parser's limit" --config deep.yaml
  expect_error "out of host memory: parameters (master weights) needs" "${TINY[@]}" --set model.d_model=4000000 \
    --set model.n_head=1 --set train.out_dir=r5
  expect_error "out of host memory: the activation arena needs" "${TINY[@]}" --set model.seq_len=4000000 \
    --set train.batch_size=64 --set train.out_dir=r6
  # An expert slot past the branch's last backbone unit (Pos-2 has 3: slots 1..4); Pos-3 has a fifth.
  scmoe=(--set model.arch=scmoe --set moe.num_experts=4 --set model.n_layer=2 --set train.max_steps=1)
  expert_slot_error="scmoe.expert_slot 5: the routed branch of block 1 (scmoe.position 2) overlaps 3 backbone units, so its expert slot is auto or 1..4"
  expect_error "$expert_slot_error" "${TINY[@]}" "${scmoe[@]}" --set scmoe.position=2 --set scmoe.expert_slot=5 --set train.out_dir=r7
  "$TRAIN" "${TINY[@]}" "${scmoe[@]}" --set scmoe.position=3 --set scmoe.expert_slot=5 --set comm.simulate_link.latency_us=50 --set train.out_dir=r8 >out.txt 2>&1 ||
    fail "Pos-3 with expert slot 5: $(cat out.txt)"
  echo "all documented errors seen"
  ;;
overlap_identical_*)
  # Overlapped (communication stream, simulated link so the exchanges really wait) and strictly
  # sequential execution give byte-identical weights, optimizer state and losses.
  pos=${CASE#overlap_identical_pos}
  common=("${TINY[@]}" --set model.arch=scmoe --set scmoe.position=$pos --set moe.num_experts=4 --set model.n_layer=4
          --set moe.gate_noise=true --set train.max_steps=6 --set train.eval_every=3 --set scmoe.expert_slot=auto
          --set comm.simulate_link.bandwidth_gb_s=0.5 --set comm.simulate_link.latency_us=200)
  "$TRAIN" "${common[@]}" --set comm.overlap=false --set train.out_dir=seq >seq.log 2>&1 || { cat seq.log; fail "sequential run"; }
  "$TRAIN" "${common[@]}" --set comm.overlap=true --set train.out_dir=ovl >ovl.log 2>&1 || { cat ovl.log; fail "overlapped run"; }
  grep -q "expert_slot auto: block" ovl.log || fail "auto slot choice not logged"
  for f in seq/checkpoints/step_00000006/*.safetensors; do
    cmp "$f" "ovl/checkpoints/step_00000006/$(basename "$f")" || fail "$(basename "$f") differs between schedules"
  done
  python3 - seq/metrics.jsonl ovl/metrics.jsonl <<'PY' || fail "losses differ between schedules"
import json, sys
get = lambda p: [(r["step"], r.get("loss"), r.get("val_loss"), r.get("aux_loss")) for r in map(json.loads, open(p))]
a, b = get(sys.argv[1]), get(sys.argv[2])
assert a == b and a, (a, b)
print(f"{len(a)} records identical")
PY
  grep "expert_slot auto" ovl.log
  echo "pos-$pos: overlapped == sequential, byte for byte"
  ;;
pipeline_equiv)
  # Chunked pipelining (moe.pipeline_degree 3, on the communication stream under a simulated link) gives
  # the losses and weights of the unpipelined run: float64, equal up to the order in which expert weight
  # gradients are summed over chunks (tolerance 1e-9 relative).
  common=("${TINY[@]}" --set model.arch=moe --set moe.num_experts=4 --set model.n_layer=4 --set moe.capacity_factor=1.0
          --set train.dtype=float64 --set train.max_steps=5 --set train.eval_every=5 --set comm.simulate_link.bandwidth_gb_s=1)
  "$TRAIN" "${common[@]}" --set moe.pipeline_degree=1 --set train.out_dir=p1 >p1.log 2>&1 || { cat p1.log; fail "P=1 run"; }
  "$TRAIN" "${common[@]}" --set moe.pipeline_degree=3 --set train.out_dir=p3 >p3.log 2>&1 || { cat p3.log; fail "P=3 run"; }
  /usr/bin/python3 - "$SRC/tests/torch_ref" p1 p3 <<'PY' || fail "pipelined run differs"
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np, st
def metrics(d):
    return [(r["step"], r.get("loss"), r.get("grad_norm"), r.get("aux_loss"), r.get("val_loss"))
            for r in map(json.loads, open(d + "/metrics.jsonl"))]
a, b = metrics(sys.argv[2]), metrics(sys.argv[3])
assert len(a) == len(b) and a
for x, y in zip(a, b):
    for u, v in zip(x[1:], y[1:]):
        assert (u is None) == (v is None) and (u is None or abs(u - v) <= 1e-9 * max(1, abs(u))), (x, y)
for f in ("model.safetensors", "experts-rank00000-of-00001.safetensors"):
    ta, _ = st.read(f"{sys.argv[2]}/checkpoints/step_00000005/{f}")
    tb, _ = st.read(f"{sys.argv[3]}/checkpoints/step_00000005/{f}")
    assert ta.keys() == tb.keys()
    worst = max(float(np.max(np.abs(ta[k] - tb[k]))) / max(1e-30, float(np.max(np.abs(ta[k])))) for k in ta)
    assert worst <= 1e-9, (f, worst)
    print(f"{f}: {len(ta)} tensors, max relative difference {worst:.1e}")
print(f"{len(a)} metric records agree within 1e-9")
PY
  grep -q "drop" p3.log || fail "no MoE step line"
  ;;
overlap_measured)
  # With a simulated link whose All-to-All time is below the overlap window, ScMoE Pos-2 hides >= 90%.
  "$TRAIN" "${TINY[@]}" --set model.arch=scmoe --set scmoe.position=2 --set moe.num_experts=4 --set model.n_layer=4 \
    --set model.d_model=128 --set model.d_ff=1024 --set train.max_steps=14 --set train.eval_every=0 \
    --set scmoe.expert_slot=auto --set comm.simulate_link.bandwidth_gb_s=4 --set train.trace_step=8 \
    --set train.out_dir=run >log.txt 2>&1 ||
    { cat log.txt; fail "training failed"; }
  python3 - run/metrics.jsonl <<'PY' || fail "overlap below 0.9"
import json, sys
recs = [r for r in map(json.loads, open(sys.argv[1])) if "overlap" in r][5:]  # after the auto slot choice
comm = sum(r["comm_ms"] for r in recs); exposed = sum(r["exposed_comm_ms"] for r in recs)
ov = 1 - exposed / comm
print(f"steps {recs[0]['step']}-{recs[-1]['step']}: comm {comm:.1f} ms, exposed {exposed:.2f} ms, overlap {ov:.3f} (simulated link 4 GB/s)")
sys.exit(0 if ov >= 0.9 else 1)
PY
  # The Chrome trace of step 8: exchanges on the communication track, backbone stages on the compute one.
  python3 - run/trace-rank0.json <<'PY' || fail "trace missing or malformed"
import json, sys
ev = [e for e in json.load(open(sys.argv[1]))["traceEvents"] if e["ph"] == "X"]
comm = [e["name"] for e in ev if e["tid"] == 1]
comp = [e["name"] for e in ev if e["tid"] == 0]
assert {"dispatch L1", "combine L1", "combine grad L1", "dispatch grad L1"} <= set(comm), comm
assert "attn1" in comp and "compute1" in comp and "bw_compute1" in comp, comp
print(f"trace: {len(comm)} exchanges on the communication track, {len(comp)} events on the compute track")
PY
  ;;
data_changes)
  # Issue 15, cases 1 and 2: data that changes or is bad loses no training and never kills with SIGBUS.
  # (a) A token >= model.vocab_size in the validation shard stops the run at start, naming the shard.
  mkdir -p bad
  cp "$DATA/val_000000.bin" bad/val_000000.bin
  printf '\x2c\x01' | dd of=bad/val_000000.bin bs=1 seek=$(( $(stat -c %s bad/val_000000.bin) - 2 )) conv=notrunc status=none
  if "$TRAIN" "${TINY[@]}" --set "data.val=bad/val_*.bin" --set train.max_steps=50 --set train.out_dir=a >a.log 2>&1; then
    fail "a bad validation token was accepted"
  fi
  grep -q "error: data.val: token shard 'bad/val_000000.bin': token 300 at position .* >= model.vocab_size 256" a.log ||
    fail "bad token error unclear: $(tail -1 a.log)"
  grep -q "^step" a.log && fail "training started before the bad token was found"
  # truncated_while_training SPLIT LOG args...: trains on a copy of the SPLIT (train|val) shard, truncates
  # it to its header and 38 tokens once step 2 is logged, and leaves the exit status in RC.
  truncated_while_training() {
    local split=$1 log=$2
    shift 2
    cp "$DATA/${split}_000000.bin" "bad/${split}_000000.bin"
    train_in_background "$log" 2 "${TINY[@]}" --set "data.$split=bad/${split}_*.bin" --set train.eval_every=0 \
      --set checkpoint.every=0 "$@"
    truncate -s 1100 "bad/${split}_000000.bin"
    RC=0
    wait $BG_PID || RC=$?
  }
  # (b) The train shard truncated while training: a named error, not SIGBUS (exit 135).
  truncated_while_training train b.log --set train.max_steps=100000 --set train.out_dir=b
  [[ $RC == 2 ]] || { tail -3 b.log; fail "truncated train shard: exit status $RC, expected 2 (135 is SIGBUS)"; }
  grep -q "token shard 'bad/train_000000.bin' ended early .* truncated while in use" b.log ||
    fail "truncation error unclear: $(tail -1 b.log)"
  # (c) The validation shard truncated during training: the final evaluation fails, but only after the
  # final checkpoint is on disk.
  truncated_while_training val c.log --set train.max_steps=150 --set train.out_dir=c
  grep -q "^step   150/150" c.log || fail "the run did not reach its last step: $(tail -2 c.log)"
  [[ $RC == 2 ]] || fail "truncated val shard: exit status $RC, expected 2"
  grep -q "ended early" c.log || fail "evaluation error unclear: $(tail -1 c.log)"
  [[ -f c/checkpoints/step_00000150/COMPLETE ]] || fail "the final checkpoint was lost with the evaluation"
  echo "bad val token refused at start; truncated train shard -> exit 2 with a message; final checkpoint kept"
  ;;
checkpoint_corrupt)
  # Issue 15, case 4: a damaged checkpoint is refused by every reader, naming file and tensor; weights
  # that give non-finite logits stop generation with an error.
  "$TRAIN" "${TINY[@]}" --set train.max_steps=2 --set train.out_dir=run >log.txt 2>&1 || { cat log.txt; fail "train"; }
  good=run/checkpoints/step_00000002
  cp -r $good flipped
  "$PY" - flipped/model.safetensors <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[-40] ^= 0x10  # one bit of the last tensor's data
open(p, "wb").write(b)
PY
  expect_refused() {  # expect_refused NEEDLE LABEL command...
    local needle=$1 label=$2
    shift 2
    if "$@" >out.txt 2>err.txt; then fail "$label accepted a damaged checkpoint"; fi
    grep -qF -- "$needle" err.txt || fail "$label: error lacks '$needle': $(tail -1 err.txt)"
  }
  expect_refused "in flipped/model.safetensors fails its checksum" resume \
    "$TRAIN" "${TINY[@]}" --set train.max_steps=4 --set train.out_dir=r1 --resume flipped
  expect_refused "fails its checksum" eval-only "$TRAIN" "${TINY[@]}" --set train.out_dir=r2 --eval-only --resume flipped
  expect_refused "fails its checksum" generate "$TRAIN" generate "${TINY[@]}" --resume flipped --prompt "To be"
  expect_refused "fails its checksum" reshard "$PY" "$SRC/scripts/reshard_checkpoint.py" flipped resharded --world-size 1
  [[ ! -e resharded ]] || fail "reshard left an output behind"
  # A NaN (or huge weights) written with valid checksums, through the project's own writer.
  cp -r $good nan
  cp -r $good huge
  "$PY" - "$SRC" <<'PY'
import sys
sys.path.insert(0, sys.argv[1] + "/tests/torch_ref")
import st
t, md = st.read("nan/model.safetensors")
t["ln_f.weight"][5] = float("nan")
st.write("nan/model.safetensors", t, md)
t, md = st.read("huge/model.safetensors")
t["ln_f.weight"][:] = 3e38  # finite weights, logits that overflow
st.write("huge/model.safetensors", t, md)
PY
  expect_refused "tensor 'ln_f.weight' in nan/model.safetensors holds a non-finite value at element 5" resume \
    "$TRAIN" "${TINY[@]}" --set train.max_steps=4 --set train.out_dir=r3 --resume nan
  expect_refused "non-finite value at element 5" generate "$TRAIN" generate "${TINY[@]}" --resume nan --prompt "To be"
  expect_refused "non-finite value" reshard "$PY" "$SRC/scripts/reshard_checkpoint.py" nan resharded --world-size 1
  expect_refused "is not finite" generate "$TRAIN" generate "${TINY[@]}" --resume huge --prompt "To be" --max-new-tokens 4
  [[ ! -s out.txt ]] || fail "generate printed tokens from non-finite logits: $(od -c out.txt | head -2)"
  # The intact checkpoint still loads everywhere.
  "$TRAIN" "${TINY[@]}" --set train.out_dir=r4 --eval-only --resume $good >/dev/null 2>&1 || fail "intact checkpoint refused"
  "$PY" "$SRC/scripts/reshard_checkpoint.py" $good ok --world-size 1 >/dev/null || fail "reshard of the intact checkpoint"
  "$TRAIN" "${TINY[@]}" --set train.out_dir=r5 --eval-only --resume ok >/dev/null 2>&1 || fail "resharded checkpoint refused"
  echo "flipped bit, NaN and overflowing weights refused by resume, eval-only, generate and reshard"
  ;;
out_dir_lock)
  # Issue 15, case 6: a second run on the same train.out_dir stops at once naming the first; a killed
  # run's lock is taken over with a notice.
  train_in_background a.log 3 "${TINY[@]}" --set train.max_steps=100000 --set train.eval_every=0 \
    --set checkpoint.every=2 --set train.out_dir=run
  pid=$BG_PID
  if "$TRAIN" "${TINY[@]}" --set train.max_steps=10 --set train.out_dir=run --resume auto >b.log 2>&1; then
    kill -KILL $pid; fail "a second run on the same out_dir was allowed"
  fi
  grep -q "error: train.out_dir 'run' is in use by another run (pid $pid on host" b.log ||
    { kill -KILL $pid; fail "refusal does not name the first run (pid $pid): $(tail -1 b.log)"; }
  kill -KILL $pid
  wait $pid 2>/dev/null || true
  "$TRAIN" "${TINY[@]}" --set train.max_steps=6 --set train.out_dir=run --resume auto >c.log 2>&1 ||
    { cat c.log; fail "the run after a killed one failed"; }
  grep -q "notice: took over the lock run/.lock of a run that is no longer running (pid $pid" c.log ||
    fail "no takeover notice: $(grep -i lock c.log)"
  [[ ! -s run/.lock ]] || fail "lock file not emptied at a clean exit"
  echo "second run refused naming pid $pid; lock of the killed run taken over"
  ;;
notices_on_resume)
  # Issue 15, case 8: a resume that changes the batch, or has nothing left to train, says so.
  "$TRAIN" "${TINY[@]}" --set train.max_steps=4 --set train.out_dir=run >a.log 2>&1 || { cat a.log; fail "train"; }
  "$TRAIN" "${TINY[@]}" --set train.max_steps=6 --set train.batch_size=4 --set train.out_dir=run --resume auto \
    >b.log 2>&1 || { cat b.log; fail "resume with another batch size"; }
  grep -q "notice: train.batch_size was 8 when the checkpoint was written, now 4" b.log ||
    fail "no batch-size notice: $(grep -i notice b.log)"
  "$TRAIN" "${TINY[@]}" --set train.max_steps=6 --set train.batch_size=4 --set train.out_dir=run --resume auto \
    >c.log 2>&1 || { cat c.log; fail "resume at max_steps"; }
  grep -q "notice: the checkpoint is at step 6 and train.max_steps is 6: nothing to train" c.log ||
    fail "no max_steps notice: $(grep -i notice c.log)"
  grep -q "train.batch_size was" c.log && fail "a notice for a batch size that did not change"
  echo "batch-size change and nothing-to-train resumes noticed"
  ;;
*)
  fail "unknown case"
  ;;
esac
