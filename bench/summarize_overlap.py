#!/usr/bin/env python3
"""Summarises bench/overlap.sh: runs/overlap<SUFFIX>/<config>_bw<GB/s>/ -> a Markdown table, the ScMoE slot
windows and a plot, written to docs/overlap_table<SUFFIX>.md and docs/overlap<SUFFIX>.png.
   summarize_overlap.py OUT_DIR BANDWIDTH...      (SUFFIX and ROUTING from the environment, as overlap.sh sets)

Per run, over steps 7-16 (after the auto slot choice at step 3): the median step time; communication
figures summed over those steps (comm, exposed, peer wait per step are the sums / steps; overlap =
1 - sum exposed / sum comm, so a bad step weighs by its time, not as one of ten); forward time per
validation batch (steps 8 and 16).
"""
import json, os, re, statistics, subprocess, sys
out, bws = sys.argv[1], sys.argv[2:]
suffix, routing = os.environ["SUFFIX"], os.environ["ROUTING"]
def stats(d):
    recs = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
    evals = [r["eval_forward_ms"] for r in recs if "eval_forward_ms" in r]  # steps 8 and 16: after the auto slot choice
    recs = [r for r in recs if "step_ms" in r][6:]
    total = lambda k: sum(r.get(k, 0.0) for r in recs)
    comm, exposed = total("comm_ms"), total("exposed_comm_ms")
    split = "peer_wait_ms" in recs[0]  # the transport told when every rank had arrived
    peer, exposed_peer = total("peer_wait_ms"), total("exposed_peer_wait_ms")
    return {"step": statistics.median(r["step_ms"] for r in recs), "comm": comm / len(recs),
            "exposed": exposed / len(recs), "overlap": max(0.0, 1 - exposed / comm) if comm > 0 else 0.0,
            "peer": peer / len(recs) if split else None,
            "tov": max(0.0, 1 - (exposed - exposed_peer) / (comm - peer)) if split and comm > peer else None,
            "fwd": statistics.median(evals)}
names = {"ts_scmoe_pos2": "ScMoE Pos-2 (overlapped)", "ts_moe_top2": "top-2 MoE",
         "ts_moe_top2_pipelined": "top-2 MoE, pipelined (4 chunks)", "ts_moe_top1": "top-1 MoE",
         "ts_shared_expert": "shared expert + top-1"}
cpu = subprocess.run("lscpu | sed -n 's/^Model name:\\s*//p'", shell=True, capture_output=True, text=True).stdout.strip()
def transport(d):  # how the run's MoE exchanges travelled, from its log
    m = re.search(r"MoE All-to-Alls ([^)]*)\)", open(d + ".log").read())
    return m.group(1) if m else "?"
first = os.path.join(out, "ts_scmoe_pos2_bw" + bws[0])
day = __import__("datetime").date.fromtimestamp(os.path.getmtime(first + ".log")).isoformat()
lines = [f"Machine: {cpu}, 2 cores, {day}; 2 ranks, 1 thread each, MoE All-to-Alls {transport(first)}; "
         f"{routing} routing; links SIMULATED. Step and forward times: medians; communication: per-step "
         "means over steps 7-16, overlap from their sums.", "",
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
