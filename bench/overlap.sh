#!/usr/bin/env bash
# The ScMoE overlap benchmark: ScMoE Pos-2 (overlapped) vs top-2 MoE (plain and with chunked pipelining,
# moe.pipeline_degree 4) vs top-1 MoE vs shared expert, same active compute (configs/ts_*.yaml), 2 ranks
# through train/launch, at several simulated link speeds.
#   [ROUTING=learned|balanced] [TRANSPORT=auto|shm|gloo] bench/overlap.sh [STEPS] [BANDWIDTHS_GB_S...]
#   (defaults: learned routing, auto transport (shared memory on one host), 16 steps; 0.015 0.05 0.2 1 GB/s)
# Prints a Markdown table (median step time after the first 6 steps, speed-up over top-2, communication
# share of top-2's step, overlap; where the transport tells when every rank had arrived, the time
# exchanges waited for the slower rank and the overlap of the transfers alone) and the windows the
# ScMoE slot choice saw, and writes them to docs/overlap_table<SUFFIX>.md (with a plot,
# docs/overlap<SUFFIX>.png): SUFFIX is _balanced for ROUTING=balanced (moe.force_balanced_routing: random
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
/usr/bin/python3 - "$OUT" "${BWS[@]}" <<'PY'
import json, os, re, statistics, subprocess, sys
out, bws = sys.argv[1], sys.argv[2:]
suffix, routing = os.environ["SUFFIX"], os.environ["ROUTING"]
def stats(d):
    recs = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
    evals = [r["eval_forward_ms"] for r in recs if "eval_forward_ms" in r]  # steps 8 and 16: after the auto slot choice
    recs = [r for r in recs if "step_ms" in r][6:]
    med = lambda k: statistics.median(r.get(k, 0.0) for r in recs)
    return {"step": med("step_ms"), "comm": med("comm_ms"), "exposed": med("exposed_comm_ms"), "overlap": med("overlap"),
            "peer": med("peer_wait_ms") if "peer_wait_ms" in recs[0] else None,
            "tov": med("transfer_overlap") if "transfer_overlap" in recs[0] else None, "fwd": statistics.median(evals)}
names = {"ts_scmoe_pos2": "ScMoE Pos-2 (overlapped)", "ts_moe_top2": "top-2 MoE",
         "ts_moe_top2_pipelined": "top-2 MoE, pipelined (4 chunks)", "ts_moe_top1": "top-1 MoE",
         "ts_shared_expert": "shared expert + top-1"}
cpu = subprocess.run("lscpu | sed -n 's/^Model name:\\s*//p'", shell=True, capture_output=True, text=True).stdout.strip()
def transport(d):  # how the run's MoE exchanges travelled, from its log
    m = re.search(r"MoE All-to-Alls ([^)]*)\)", open(d + ".log").read())
    return m.group(1) if m else "?"
lines = [f"Machine: {cpu}, 2 cores; 2 ranks, 1 thread each, MoE All-to-Alls "
         f"{transport(os.path.join(out, 'ts_scmoe_pos2_bw' + bws[0]))}; {routing} routing; links SIMULATED.", "",
         "| link (GB/s) | config | train step ms | train speed-up vs top-2 | forward ms | inference speed-up vs top-2 | comm ms | exposed ms | overlap | peer wait ms | transfer overlap | top-2 comm share |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
plot = {}
for bw in bws:
    s = {c: stats(os.path.join(out, f"{c}_bw{bw}")) for c in names}
    base = s["ts_moe_top2"]
    share = base["comm"] / base["step"]
    for c, label in names.items():
        r = s[c]
        lines.append(f"| {bw} | {label} | {r['step']:.1f} | {base['step'] / r['step']:.2f}x | {r['fwd']:.1f} | "
                     f"{base['fwd'] / r['fwd']:.2f}x | {r['comm']:.1f} | {r['exposed']:.1f} | {r['overlap']:.2f} | "
                     f"{'-' if r['peer'] is None else format(r['peer'], '.1f')} | "
                     f"{'-' if r['tov'] is None else format(r['tov'], '.2f')} | {share:.0%} |")
        plot.setdefault(c, []).append((share, base["step"] / r["step"]))
# Whether ScMoE's exchanges fit their windows: the slot choice's per-step figures (first 3 steps).
lines += ["", "ScMoE Pos-2 `expert_slot: auto` (per step, forward; times of the first steps):", ""]
for bw in bws:
    m = re.search(r"expert_slot auto: (.*)", open(os.path.join(out, f"ts_scmoe_pos2_bw{bw}.log")).read())
    lines.append(f"- {bw} GB/s: {m.group(1) if m else 'not logged'}")
print("\n".join(lines))
os.makedirs("docs", exist_ok=True)
table, plot_file = f"docs/overlap_table{suffix}.md", f"docs/overlap{suffix}.png"
open(table, "w").write("\n".join(lines) + "\n")
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c, pts in plot.items():
        pts.sort()
        ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], marker="o", label=names[c])
    ax.set_xlabel("communication share of top-2 MoE's step (%), simulated link")
    ax.set_ylabel("training speed-up over top-2 MoE")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    ax.set_title(f"{routing} routing")
    fig.savefig(plot_file, dpi=120)
    print(f"wrote {table} and {plot_file}")
except ImportError:
    print("matplotlib missing: no plot")
PY
