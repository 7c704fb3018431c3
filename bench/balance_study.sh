#!/usr/bin/env bash
# Load-balancing study (issue 16): ScMoE Pos-2 (top-1 routed) and top-2 MoE on Tiny Shakespeare (byte
# level, configs/ts_scmoe_pos2.yaml and ts_moe_top2.yaml), each balanced three ways:
#   aux   the GShard/Switch auxiliary loss only (moe.aux_loss_coef 0.01, the configs' default)
#   bias  auxiliary-loss-free expert bias only (moe.expert_bias, rate 1e-3; aux_loss_coef 0)
#   both  the auxiliary loss and the expert bias
# two seeds each, every run on 2 ranks through train/launch (expert parallel: 4 experts per rank, the same
# global batch of 16 sequences as the single-process configs) over a SIMULATED link, so one run gives
# the final validation loss, the expert loads every step (max/mean before and after capacity), and the
# time exchanges waited for the slower rank (peer wait) and the overlap.
#   bench/balance_study.sh [STEPS] [SEEDS...]   (defaults: 400 steps, seeds 1337 2024; BW=0.2 GB/s)
# Runs go to runs/balance/<config>_<mode>_s<seed>/ (OUT overrides; a finished run is not repeated); the
# table and the plot to docs/results/balance_study_table.md and .png (bench/report.py balance).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-400}
shift || true
[[ $# -gt 0 ]] && SEEDS=("$@") || SEEDS=(1337 2024)
BW=${BW:-0.2}
[[ -x build/train ]] || scripts/build.sh >/dev/null
[[ -f data/tinyshakespeare/train_000000.bin ]] ||
  python3 data/prepare.py --input data/tinyshakespeare.txt --out-dir data/tinyshakespeare >/dev/null
OUT=${OUT:-runs/balance}
mkdir -p "$OUT"
for cfg in ts_scmoe_pos2 ts_moe_top2; do
  for mode in aux bias both; do
    case $mode in
      aux) bal=(--set moe.aux_loss_coef=0.01 --set moe.expert_bias.enabled=false) ;;
      bias) bal=(--set moe.aux_loss_coef=0 --set moe.expert_bias.enabled=true --set moe.expert_bias.update_rate=1e-3) ;;
      both) bal=(--set moe.aux_loss_coef=0.01 --set moe.expert_bias.enabled=true --set moe.expert_bias.update_rate=1e-3) ;;
    esac
    for seed in "${SEEDS[@]}"; do
      dir=$OUT/${cfg}_${mode}_s$seed
      if [[ -f $dir/done ]]; then echo "skip $dir (done)"; continue; fi
      rm -rf "$dir"
      echo "== $cfg, $mode, seed $seed: 2 ranks, simulated link $BW GB/s" >&2
      start=$(date +%s)
      train/launch --nproc-per-node 2 --master-port 0 -- build/train --config configs/$cfg.yaml "${bal[@]}" \
        --set train.seed="$seed" --set train.max_steps="$STEPS" --set train.batch_size=8 --set train.threads=1 \
        --set train.log_every=50 --set checkpoint.every=0 --set comm.transport=shm \
        --set comm.simulate_link.bandwidth_gb_s="$BW" --set comm.simulate_link.latency_us=50 \
        --set train.out_dir="$dir" >"$dir.log" 2>&1 || { tail -20 "$dir.log"; exit 1; }
      grep -E "^step .*/$STEPS |val_loss" "$dir.log" | tail -2 >&2
      echo "   $(( $(date +%s) - start )) s" >&2
      touch "$dir/done"
    done
  done
done
/usr/bin/python3 bench/report.py balance "$OUT" docs/results/balance_study "$BW"
