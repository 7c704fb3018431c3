#!/usr/bin/env bash
# CPU training throughput of our `train` beside the same model in PyTorch, in one run on one machine.
#   [BASELINE=path/to/an/older/train] bench/cpu_vs_torch.sh [STEPS] [THREADS]      (defaults: 40 steps, all cores)
# With BASELINE, that binary trains the same model in the same run (alternating with ours, twice each),
# so a change can be shown not to slow the CPU backend down.
# Model: configs/quickstart.yaml (4 layers, d_model 128, 4 heads, d_ff 512, seq 128, batch 16, vocab 256).
# Both sides: float32, AdamW + clipping, the same thread count (OMP_NUM_THREADS for PyTorch as well).
# Prints a Markdown table; tokens/s are medians over the steps after the first 5 (warm-up).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-40}
THREADS=${2:-$(nproc)}
[[ -x build/train ]] || scripts/build.sh >/dev/null
[[ -f data/tinyshakespeare/train_000000.bin ]] ||
  python3 data/prepare.py --input data/tinyshakespeare.txt --out-dir data/tinyshakespeare >/dev/null
# Median tokens/s of a `train` binary on the model (steps after the first 5).
tok_s() {
  local out
  out=$(mktemp -d)
  "$1" --config configs/quickstart.yaml --set train.max_steps="$STEPS" --set train.eval_every=0 \
    --set checkpoint.every=0 --set train.log_every=1000 --set train.threads="$THREADS" --set optim.warmup_steps=5 \
    --set train.out_dir="$out" >/dev/null
  python3 - "$out/metrics.jsonl" <<'PY'
import json, statistics, sys
v = [json.loads(l)["tokens_per_s"] for l in open(sys.argv[1]) if '"tokens_per_s"' in l][5:]
print(f"{statistics.median(v):.0f}")
PY
  rm -rf "$out"
}
ours=$(tok_s build/train)
if [[ -n ${BASELINE:-} ]]; then  # alternate: ours, baseline, ours, baseline; the better of each pair
  base=$(tok_s "$BASELINE")
  ours2=$(tok_s build/train)
  base2=$(tok_s "$BASELINE")
  ours=$(python3 -c "print(max($ours, $ours2))")
  base=$(python3 -c "print(max($base, $base2))")
fi
# PyTorch twice: as installed, and with its BLAS single-threaded (Debian's torch + OpenBLAS threads
# contend with its OpenMP pool exactly as ours did); the better of the two is the baseline.
torch_run() {
  env "$@" OMP_NUM_THREADS=$THREADS /usr/bin/python3 bench/torch_train.py --n-layer 4 --d-model 128 --n-head 4 \
    --d-ff 512 --seq-len 128 --vocab-size 256 --batch-size 16 --steps "$STEPS" --warmup 5 --threads "$THREADS" |
    tail -1 | awk '{print $3}'
}
t_default=$(torch_run)
t_blas1=$(torch_run OPENBLAS_NUM_THREADS=1)
theirs=$(python3 -c "print(max($t_default, $t_blas1))")
cpu=$(lscpu | sed -n 's/^Model name:\s*//p')
echo "| implementation | tokens/s | machine |"
echo "| --- | --- | --- |"
echo "| scmoe train (C++, OpenBLAS) | $ours | $cpu, $THREADS threads |"
[[ -n ${BASELINE:-} ]] && echo "| baseline $BASELINE | $base | same |"
tv=$(/usr/bin/python3 -c 'import torch; print(torch.__version__)')
printf "| PyTorch %s eager, as installed | %.0f | same |\n" "$tv" "$t_default"
printf "| PyTorch %s eager, OPENBLAS_NUM_THREADS=1 | %.0f | same |\n" "$tv" "$t_blas1"
python3 -c "print(f'speed-up over the better PyTorch run: {$ours / $theirs:.2f}x')"
[[ -n ${BASELINE:-} ]] && python3 -c "print(f'this build / the baseline: {$ours / $base:.3f}')"
exit 0
