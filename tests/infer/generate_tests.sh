#!/usr/bin/env bash
# End-to-end tests of `train generate` (registered in tests/infer/infer.cmake):
#   generate_tests.sh TRAIN_BIN SOURCE_DIR CASE
# Each case trains a tiny model for a few steps in its own scratch directory, then generates from it.
set -euo pipefail
TRAIN=$1 SRC=$2 CASE=$3
PREFIX=generate_test
# shellcheck source=tests/e2e_common.sh
source "$SRC/tests/e2e_common.sh"

TINY=(--set model.n_layer=4 --set model.d_model=64 --set model.n_head=4 --set model.d_ff=128
      --set model.seq_len=32 --set train.batch_size=4 --set train.eval_batches=1 --set train.eval_every=0
      --set moe.num_experts=4 --set "data.train=$DATA/train_*.bin" --set "data.val=$DATA/val_*.bin"
      --set train.threads=1  # ctest runs two cases at once on 2 cores
      --set train.device=cpu)  # the cuda case overrides it

train_model() {  # train_model OUT_DIR extra-args...: 8 steps, a checkpoint at the end
  local out=$1
  shift
  "$TRAIN" "${TINY[@]}" "$@" --set train.max_steps=8 --set train.out_dir="$out" >"$out.train.log" 2>&1 ||
    { cat "$out.train.log"; fail "training $out failed"; }
}

gen() {  # gen OUT_FILE args...: stdout to OUT_FILE, stderr to OUT_FILE.err
  local out=$1
  shift
  "$TRAIN" generate "${TINY[@]}" "$@" >"$out" 2>"$out.err" || { cat "$out.err"; fail "generate $* failed"; }
}

case $CASE in
basic)
  train_model run --set model.arch=scmoe
  # The run's resolved config.yaml is all generate needs (here it points train.out_dir at run/).
  # Deterministic for a seed, one byte per token, the figures on stderr (and nothing else on stdout).
  gen a.txt --config run/config.yaml --resume auto --prompt "ROMEO:" --max-new-tokens 80 --seed 3
  gen b.txt --config run/config.yaml --resume auto --prompt "ROMEO:" --max-new-tokens 80 --seed 3
  gen c.txt --config run/config.yaml --resume auto --prompt "ROMEO:" --max-new-tokens 80 --seed 4
  [[ $(wc -c <a.txt) -eq 80 ]] || fail "expected 80 bytes of continuation, got $(wc -c <a.txt)"
  cmp a.txt b.txt || fail "same seed, different continuations"
  cmp -s a.txt c.txt && fail "seeds 3 and 4 gave the same continuation"
  grep -q "tokens/s; per-token latency median" a.txt.err || fail "no figures on stderr: $(cat a.txt.err)"
  grep -q "^generate_stats {" a.txt.err || fail "no generate_stats line"
  grep -q "window slid" a.txt.err || fail "86 positions in a 32-token window should slide"
  # --prompt-file is --prompt from a file; --resume PATH is --resume auto's newest checkpoint.
  printf 'ROMEO:' >prompt.txt
  gen d.txt --config run/config.yaml --resume run/checkpoints/step_00000008 --prompt-file prompt.txt \
    --max-new-tokens 80 --seed 3
  cmp a.txt d.txt || fail "--prompt-file or --resume PATH differs from --prompt / auto"
  # Greedy does not depend on the seed; top-k 1 is greedy.
  gen g1.txt --config run/config.yaml --resume auto --prompt "ROMEO:" -n 40 --temperature 0 --seed 1
  gen g2.txt --config run/config.yaml --resume auto --prompt "ROMEO:" -n 40 --temperature 0 --seed 2
  gen g3.txt --config run/config.yaml --resume auto --prompt "ROMEO:" -n 40 --top-k 1 --seed 5
  cmp g1.txt g2.txt && cmp g1.txt g3.txt || fail "greedy output depends on the seed or top-k 1 is not greedy"
  echo "deterministic: $(head -c 40 a.txt | tr '\n' ' ')"
  ;;
offload_*)
  # Offloading on and off give the same continuation, byte for byte, in every migration mode.
  arch=${CASE#offload_}
  extra=(--set model.arch=$arch)
  slots=1
  [[ $arch == moe ]] && slots=2  # top-2
  train_model run "${extra[@]}"
  common=("${extra[@]}" --set train.out_dir=run --resume auto --prompt "KING:" --max-new-tokens 60 --seed 7)
  gen off.txt "${common[@]}"
  for mode in async blocking speculative; do
    gen "$mode.txt" "${common[@]}" --set inference.offload_experts=true --set inference.expert_cache_slots=$slots \
      --set inference.migration=$mode --set inference.host_link_gb_s=2 --set inference.host_link_latency_us=10
    cmp off.txt "$mode.txt" || fail "offloading ($mode) changed the output"
    grep -q "device memory .* cut [0-9.]*%); migrated" "$mode.txt.err" || fail "no offload figures: $(cat "$mode.txt.err")"
    grep -q '"offload": true' "$mode.txt.err" || fail "generate_stats does not say offload"
  done
  gen all.txt "${common[@]}" --set inference.offload_experts=true --set inference.expert_cache_slots=4
  cmp off.txt all.txt || fail "caching every expert changed the output"
  grep "device memory" async.txt.err
  ;;
sharded)
  # A checkpoint re-sharded for 2 ranks loads in one process (every expert shard) and generates the same.
  train_model run --set model.arch=moe
  /usr/bin/python3 "$SRC/scripts/reshard_checkpoint.py" run/checkpoints/step_00000008 w2 --world-size 2 >/dev/null ||
    fail "re-sharding failed"
  ls w2/experts-rank00001-of-00002.safetensors >/dev/null || fail "no second expert shard"
  gen one.txt --set model.arch=moe --set train.out_dir=run --resume auto --prompt "To be" -n 50 --seed 1
  gen two.txt --set model.arch=moe --set train.out_dir=run --resume w2 --prompt "To be" -n 50 --seed 1
  cmp one.txt two.txt || fail "2-shard checkpoint generates differently"
  rm w2/experts-rank00001-of-00002.safetensors
  "$TRAIN" generate "${TINY[@]}" --set model.arch=moe --resume w2 --prompt "x" >/dev/null 2>err.txt &&
    fail "a missing expert shard went unnoticed"
  grep -q "experts-rank00001-of-00002.safetensors missing" err.txt || fail "unclear error: $(cat err.txt)"
  ;;
bias)
  # A model trained with moe.expert_bias routes with its checkpoint's biases (moe.expert_bias need not
  # be set here: generate says it uses them), with and without offloading; zeroed, the text changes.
  # (60 steps, so that the continuation depends on more than the unigram counts)
  "$TRAIN" "${TINY[@]}" --set model.arch=moe --set moe.score=sigmoid --set moe.expert_bias.enabled=true \
    --set moe.expert_bias.update_rate=0.01 --set optim.lr=3e-3 --set optim.warmup_steps=10 --set train.max_steps=60 \
    --set checkpoint.every=0 --set train.out_dir=run >run.train.log 2>&1 || { cat run.train.log; fail "training failed"; }
  common=(--set model.arch=moe --set moe.score=sigmoid --prompt "KING:" --max-new-tokens 200 --seed 3)
  gen a.txt "${common[@]}" --set train.out_dir=run --resume auto
  grep -q "routing with the checkpoint's expert biases" a.txt.err || fail "no notice of the biases: $(cat a.txt.err)"
  gen off.txt "${common[@]}" --set train.out_dir=run --resume auto --set inference.offload_experts=true \
    --set inference.expert_cache_slots=2
  cmp a.txt off.txt || fail "offloading changed the output of a model with expert biases"
  cp -r run/checkpoints/step_00000060 zeroed
  SRC=$SRC /usr/bin/python3 - zeroed/model.safetensors <<'PY' || fail "could not zero the expert biases"
import os, sys
sys.path.insert(0, os.path.join(os.environ["SRC"], "tests", "torch_ref"))
import st
t, md = st.read(sys.argv[1])
names = [n for n in t if n.endswith(".moe.expert_bias")]
assert len(names) == 2, f"expected 2 MoE layers' biases, found {names}"
assert all(abs(t[n]).max() > 1e-4 for n in names), "the expert biases never moved"
for n in names: t[n] = t[n] * 0
st.write(sys.argv[1], t, md)
PY
  gen z.txt "${common[@]}" --set train.out_dir=run --resume zeroed
  cmp -s a.txt z.txt && fail "the same text with the biases zeroed: generate does not route with them"
  echo "with biases: $(head -c 40 a.txt | tr '\n' ' ') | zeroed: $(head -c 40 z.txt | tr '\n' ' ')"
  ;;
tokenizer)
  train_model run --set model.arch=dense
  gen byte.txt --set train.out_dir=run --resume auto --prompt "ROMEO:" -n 30 --seed 2
  grep -q "byte tokenizer (the data set's meta.json)" byte.txt.err || fail "tokenizer not read from meta.json"
  # gpt2 goes through python3 + tiktoken, as data/prepare.py does. A stand-in tiktoken whose "gpt2"
  # encoding is the identity on bytes must give the byte tokenizer's output.
  mkdir -p fake/tiktoken nomod/tiktoken
  cat >fake/tiktoken/__init__.py <<'PY'
class _Bytes:
    n_vocab = 256
    def encode_ordinary(self, text):
        return list(text.encode("utf-8"))
    def decode_single_token_bytes(self, t):
        return bytes([t])
def get_encoding(name):
    assert name == "gpt2"
    return _Bytes()
PY
  echo 'raise ImportError("No module named tiktoken")' >nomod/tiktoken/__init__.py
  PYTHONPATH=$PWD/fake gen gpt2.txt --set train.out_dir=run --resume auto --prompt "ROMEO:" -n 30 --seed 2 \
    --set inference.tokenizer=gpt2
  cmp byte.txt gpt2.txt || fail "gpt2 path (stand-in tiktoken) differs from byte"
  if PYTHONPATH=$PWD/nomod "$TRAIN" generate "${TINY[@]}" --set train.out_dir=run --resume auto --prompt "x" \
      --set inference.tokenizer=gpt2 >/dev/null 2>err.txt; then fail "gpt2 without tiktoken succeeded"; fi
  grep -q "needs tiktoken" err.txt || fail "unclear error without tiktoken: $(cat err.txt)"
  ;;
errors)
  # Documented errors: non-zero exit and a message saying what to do.
  expect_error() {  # expect_error "needle" generate-args...
    local needle=$1
    shift
    if "$TRAIN" generate "$@" >out.txt 2>err.txt; then fail "expected failure for: $*"; fi
    grep -qF -- "$needle" err.txt || fail "error for '$*' lacks '$needle': $(cat err.txt)"
  }
  expect_error "there is none in empty/checkpoints" "${TINY[@]}" --set train.out_dir=empty --resume auto --prompt hi
  expect_error "unrecognised option" --bogus-flag || expect_error "unrecognized option" --bogus-flag
  expect_error "--resume auto|PATH is required" "${TINY[@]}" --prompt hi
  expect_error "give the prompt" "${TINY[@]}" --resume auto
  train_model run --set model.arch=moe
  base=("${TINY[@]}" --set model.arch=moe --set train.out_dir=run --resume auto)
  expect_error "exactly one of --prompt TEXT and --prompt-file" "${base[@]}" --prompt hi --prompt-file x.txt
  expect_error "cannot read --prompt-file 'missing.txt'" "${base[@]}" --prompt-file missing.txt
  expect_error "the prompt is empty" "${base[@]}" --prompt ""
  expect_error "--temperature must be >= 0" "${base[@]}" --prompt hi --temperature -1
  expect_error "inference.expert_cache_slots (1) must be >= moe.top_k (2)" "${base[@]}" --prompt hi \
    --set inference.offload_experts=true --set inference.expert_cache_slots=1
  expect_error "inference.migration: expected one of async|blocking|speculative" "${base[@]}" --prompt hi \
    --set inference.migration=later
  expect_error "nowhere" "${TINY[@]}" --set model.arch=moe --resume nowhere --prompt hi
  expect_error "tensor" "${TINY[@]}" --set model.arch=moe --set model.d_model=32 --set train.out_dir=run \
    --resume auto --prompt hi
  # Without a usable GPU an explicit train.device cuda says so (with one, the `cuda` case runs instead).
  if ! "$TRAIN" generate "${base[@]}" --prompt hi --set train.device=cuda >out.txt 2>err.txt; then
    grep -q "cuda requested but no CUDA device is usable" err.txt || fail "unclear error for device cuda: $(cat err.txt)"
  fi
  "$TRAIN" generate --help | grep -q -- "--max-new-tokens" || fail "generate --help lacks --max-new-tokens"
  echo "all documented errors seen"
  ;;
cuda)
  # Generation on the GPU (label gpu; exit 77 = skipped without a usable device): a model trained on
  # the device, continued in fp32 and bf16, with offloading on and off giving the same bytes; the
  # device's figures in the stats line. The numerics against the CPU are tests/infer/emu/infer_cuda.cpp's.
  probe=$("$TRAIN" generate "${TINY[@]}" --set train.device=cuda --resume nowhere --prompt x 2>&1 || true)
  if grep -q "no CUDA device is usable" <<<"$probe"; then
    echo "SKIPPED: no usable CUDA device (train.device cuda is refused)"
    exit 77
  fi
  train_model run --set model.arch=scmoe --set train.device=cuda
  common=(--set model.arch=scmoe --set train.out_dir=run --resume auto --prompt "KING:" --max-new-tokens 60
          --seed 7 --set train.device=cuda)
  for prec in fp32 bf16; do
    gen "off_$prec.txt" "${common[@]}" --set train.precision=$prec
    grep -q '"device": "cuda"' "off_$prec.txt.err" || fail "generate did not run on cuda: $(cat "off_$prec.txt.err")"
    for mode in async blocking speculative; do
      gen "${mode}_$prec.txt" "${common[@]}" --set train.precision=$prec --set inference.offload_experts=true \
        --set inference.expert_cache_slots=1 --set inference.migration=$mode
      cmp "off_$prec.txt" "${mode}_$prec.txt" || fail "offloading ($mode, $prec) changed the output on cuda"
    done
    grep "tokens/s\|device memory" "async_$prec.txt.err"
  done
  ;;
*)
  fail "unknown case"
  ;;
esac
