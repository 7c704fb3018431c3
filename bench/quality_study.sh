#!/usr/bin/env bash
# Quality study (issue: MoE family): every configs/ts_*.yaml architecture on Tiny Shakespeare (byte
# level), same budget, two seeds each; then a table and a plot in docs/results/ (bench/report.py quality).
#   bench/quality_study.sh [STEPS] [SEEDS...]     (defaults: each config's max_steps; seeds 1337 2024)
# Runs go to runs/study/<config>_s<seed>/ (a finished run is not repeated).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-}
shift || true

[[ $# -gt 0 ]] && SEEDS=("$@") || SEEDS=(1337 2024)
[[ -x build/train ]] || scripts/build.sh >/dev/null
[[ -f data/tinyshakespeare/train_000000.bin ]] ||
  python3 data/prepare.py --input data/tinyshakespeare.txt --out-dir data/tinyshakespeare >/dev/null
for cfg in configs/ts_*.yaml; do
  name=$(basename "$cfg" .yaml)
  for seed in "${SEEDS[@]}"; do
    out=runs/study/${name}_s$seed
    if [[ -f $out/done ]]; then echo "skip $out (done)"; continue; fi
    echo "== $name seed $seed"
    rm -rf "$out"
    args=(--config "$cfg" --set train.seed="$seed" --set train.out_dir="$out" --set train.log_every=100)
    [[ -n $STEPS ]] && args+=(--set train.max_steps="$STEPS")
    build/train "${args[@]}" | grep -E "^step|model:"
    touch "$out/done"
  done
done
/usr/bin/python3 bench/report.py quality runs/study docs/results/quality_study
