#!/usr/bin/env bash
# Memory-limited inference benchmark (docs/inference.md): trains (or reuses) a ScMoE Pos-2 and a top-2
# MoE model whose 16 experts per MoE layer dominate memory, then generates the same tokens with every
# expert resident, and with 2 experts per layer cached on the "device" under blocking, async and (moe)
# speculative migration over a SIMULATED host-to-device link, at several bandwidths.
#   bench/offload.sh [TRAIN_STEPS] [BANDWIDTHS_GB_S...]     (defaults: 300 steps; 2 4 8)
# Environment: BUILD (default build), REPS (default 3; medians over repetitions), DEVICE (cpu, or cuda:
# on a GPU, a larger model trained and generated on the device, experts over the real PCIe link from
# pinned memory; no bandwidths; table in docs/results/offload_table_cuda.md, runs in runs/offload_cuda).
# Prints a Markdown table and writes it to docs/results/offload_table.md. Every offloaded run must print the
# resident run's tokens byte for byte (checked). The figures are CPU-backend figures with a simulated
# link: transfers cost wall time as a link of that speed would (plus the real memcpy).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-300}
shift || true
BWS=("$@")
[[ ${#BWS[@]} -gt 0 ]] || BWS=(2 4 8)
BUILD=${BUILD:-build}
REPS=${REPS:-3}
TRAIN=$BUILD/train
[[ -x $TRAIN ]] || scripts/build.sh >/dev/null
[[ -f data/tinyshakespeare/train_000000.bin ]] ||
  python3 data/prepare.py --input data/tinyshakespeare.txt --out-dir data/tinyshakespeare >/dev/null
DEVICE=${DEVICE:-cpu}
OUT=runs/offload TABLE=docs/results/offload_table.md
# Experts dominate: 2 MoE layers x 16 experts of d_ff 1024 at d_model 256 (same active FFN compute:
# scmoe = shared expert + top-1, moe = top-2).
MODEL=(--set model.d_model=256 --set model.d_ff=1024 --set moe.num_experts=16 --set train.batch_size=8
       --set train.eval_every=0 --set train.eval_batches=4 --set train.log_every=50 --set checkpoint.every=0)
if [[ $DEVICE == cuda ]]; then
  # 8 blocks, 4 MoE layers x 16 experts of d_ff 4096 at d_model 1024: 2 GiB of experts in fp32, 8% of
  # them cached. The link is the machine's own: "0" stands for it in file names and the table.
  OUT=runs/offload_cuda TABLE=docs/results/offload_table_cuda.md BWS=(0)
  MODEL=(--set model.n_layer=8 --set model.d_model=1024 --set model.n_head=16 --set model.d_ff=4096
         --set model.seq_len=256 --set moe.num_experts=16 --set train.batch_size=16 --set train.device=cuda
         --set train.eval_every=0 --set train.eval_batches=4 --set train.log_every=50 --set checkpoint.every=0)
fi
mkdir -p "$OUT"
declare -A CONFIG=([scmoe]=configs/ts_scmoe_pos2.yaml [moe]=configs/ts_moe_top2.yaml)
for arch in scmoe moe; do
  if [[ ! -f $OUT/$arch/checkpoints/step_$(printf %08d "$STEPS")/COMPLETE ]]; then
    echo "== training $arch for $STEPS steps" >&2
    rm -rf "${OUT:?}/$arch"
    "$TRAIN" --config "${CONFIG[$arch]}" "${MODEL[@]}" --set train.max_steps="$STEPS" --set train.out_dir="$OUT/$arch" \
      >"$OUT/$arch.train.log" 2>&1 || { tail -20 "$OUT/$arch.train.log"; exit 1; }
    grep "val_loss" "$OUT/$arch.train.log" | tail -1 >&2
  fi
done

PROMPT=$'ROMEO:\nWhat light through yonder window breaks?\n'
# One compute thread: the copy stream's worker thread gets the other core, as a copy engine would.
GEN=(--resume auto --prompt "$PROMPT" --max-new-tokens 80 --seed 1 --temperature 0.8 --set train.threads=1
     --set train.device="$DEVICE")
rm -f "$OUT"/gen_*.log "$OUT"/gen_*.txt
# Async migration needs the second core for the copy thread: other work on the machine shows in the
# figures, so the load is recorded with them.
cut -d' ' -f1 /proc/loadavg >"$OUT/loadavg"
for rep in $(seq "$REPS"); do
  for arch in scmoe moe; do
    modes=(blocking async)
    [[ $arch == moe ]] && modes+=(speculative)
    base=$OUT/gen_${arch}_resident_r$rep
    "$TRAIN" generate --config "$OUT/$arch/config.yaml" "${GEN[@]}" >"$base.txt" 2>"$base.log" ||
      { cat "$base.log"; exit 1; }
    for bw in "${BWS[@]}"; do
      for mode in "${modes[@]}"; do
        f=$OUT/gen_${arch}_${mode}_bw${bw}_r$rep
        echo "== rep $rep: $arch, $mode migration, link $bw GB/s (0: the machine's own)" >&2
        lat=10
        [[ $bw == 0 ]] && lat=0
        "$TRAIN" generate --config "$OUT/$arch/config.yaml" "${GEN[@]}" --set inference.offload_experts=true \
          --set inference.expert_cache_slots=2 --set inference.migration="$mode" \
          --set inference.host_link_gb_s="$bw" --set inference.host_link_latency_us=$lat >"$f.txt" 2>"$f.log" ||
          { cat "$f.log"; exit 1; }
        cmp -s "$base.txt" "$f.txt" || { echo "offloaded output differs from resident: $f.txt" >&2; exit 1; }
      done
    done
  done
done
cut -d' ' -f1 /proc/loadavg >>"$OUT/loadavg"
mkdir -p "$(dirname "$TABLE")"
/usr/bin/python3 bench/report.py offload "$OUT" | tee "$TABLE"
