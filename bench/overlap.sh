#!/usr/bin/env bash
# The ScMoE overlap benchmark: ScMoE Pos-2 (overlapped) vs top-2 MoE (plain and with chunked pipelining,
# moe.pipeline_degree 4) vs top-1 MoE vs shared expert, same active compute (configs/ts_*.yaml), 2 ranks
# through train/launch, at several simulated link speeds.
#   [ROUTING=learned|balanced] [TRANSPORT=auto|shm|gloo] bench/overlap.sh [STEPS] [BANDWIDTHS_GB_S...]
#   (defaults: learned routing, auto transport (shared memory on one host), 16 steps; 0.015 0.05 0.2 1 GB/s)
# Prints a Markdown table (median step time after the first 6 steps, speed-up over top-2, communication
# share of top-2's step, overlap; where the transport tells when every rank had arrived, the time
# exchanges waited for the slower rank and the overlap of the transfers alone) and the windows the
# ScMoE slot choice saw, and writes them to docs/results/overlap_table<SUFFIX>.md (with a plot,
# docs/results/overlap<SUFFIX>.png): SUFFIX is _balanced for ROUTING=balanced (moe.force_balanced_routing: random
# router logits, so expert loads stay balanced and communication is measured apart from load
# imbalance) and _gloo for TRANSPORT=gloo.
# All link figures are SIMULATED (comm.simulate_link delays each All-to-All on top of the real exchange).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-16}
shift || true
BWS=("$@")
[[ ${#BWS[@]} -gt 0 ]] || BWS=(0.015 0.05 0.2 1)
[[ -x build/train ]] || scripts/build.sh >/dev/null
[[ -f data/tinyshakespeare/train_000000.bin ]] ||
  python3 data/prepare.py --input data/tinyshakespeare.txt --out-dir data/tinyshakespeare >/dev/null
ROUTING=${ROUTING:-learned}
TRANSPORT=${TRANSPORT:-auto}
[[ $ROUTING == learned || $ROUTING == balanced ]] || { echo "ROUTING must be learned or balanced" >&2; exit 2; }
SUFFIX=
[[ $ROUTING == balanced ]] && SUFFIX=_balanced
[[ $TRANSPORT == gloo ]] && SUFFIX=${SUFFIX}_gloo
export ROUTING TRANSPORT SUFFIX
OUT=runs/overlap$SUFFIX
rm -rf "$OUT" && mkdir -p "$OUT"
for bw in "${BWS[@]}"; do
  for run in ts_scmoe_pos2 ts_moe_top2 ts_moe_top2:pipelined ts_moe_top1 ts_shared_expert; do
    cfg=${run%%:*}
    extra=()
    [[ $run == *:pipelined ]] && extra=(--set moe.pipeline_degree=4)
    dir=$OUT/${run/:/_}_bw$bw
    echo "== $run, simulated link $bw GB/s, $ROUTING routing, transport $TRANSPORT" >&2
    train/launch --nproc-per-node 2 --master-port 0 -- build/train --config configs/$cfg.yaml "${extra[@]}" \
      --set train.batch_size=8 --set train.threads=1 --set train.max_steps="$STEPS" --set train.eval_every=8 \
      --set train.eval_batches=4 \
      --set checkpoint.every=0 --set train.log_every=1000 --set scmoe.expert_slot=auto \
      --set comm.simulate_link.bandwidth_gb_s="$bw" --set comm.simulate_link.latency_us=50 \
      --set comm.transport="$TRANSPORT" --set moe.force_balanced_routing=$([[ $ROUTING == balanced ]] && echo true || echo false) \
      --set train.out_dir="$dir" >"$dir.log" 2>&1 || { tail -20 "$dir.log"; exit 1; }
  done
done
/usr/bin/python3 bench/report.py overlap "$OUT" "${BWS[@]}"
