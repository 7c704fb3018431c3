#!/usr/bin/env python3
"""Summarises bench/balance_study.sh: runs/balance/<config>_<mode>_s<seed>/ -> a Markdown table and a plot.
   summarize_balance.py RUNS_DIR OUT_PREFIX BANDWIDTH_GB_S

Per run (metrics.jsonl, one record per step): the final validation loss; the expert load as max/mean
over experts of the worst MoE layer, before capacity ("routed": the router's choices, what the balancing
acts on) and after it ("admitted"), averaged over all steps and over the last quarter; the fraction of
rows dropped by capacity; from step 7 on (after the slot choice), the time exchanges waited for the
slower rank per step (peer wait), the overlap 1 - sum exposed / sum communication, the median step time;
the expert biases' final range. Seeds are averaged; per-seed validation losses are listed.
"""
import collections
import json
import os
import statistics
import subprocess
import sys

MODES = {"aux": "aux loss only", "bias": "expert bias, aux off", "both": "aux loss + expert bias"}
CONFIGS = {"ts_scmoe_pos2": "ScMoE Pos-2 (top-1)", "ts_moe_top2": "top-2 MoE"}


def load(run):
    steps, val = [], []
    for line in open(os.path.join(run, "metrics.jsonl")):
        r = json.loads(line)
        if "val_loss" in r:
            val.append((r["step"], r["val_loss"]))
        elif "step_ms" in r:
            steps.append(r)
    n = len(steps)
    tail = steps[n - n // 4:]
    late = steps[6:]
    comm = sum(r.get("comm_ms", 0.0) for r in late)
    exposed = sum(r.get("exposed_comm_ms", 0.0) for r in late)
    bias = [v for r in steps[-1:] for k, v in r.items() if k.endswith("_bias_min") or k.endswith("_bias_max")]
    mean = lambda rs, k: statistics.mean(r[k] for r in rs)
    return {
        "val": val[-1][1], "curve": val, "steps": n,
        "routed": mean(steps, "moe_routed_max"), "routed_tail": mean(tail, "moe_routed_max"),
        "cv": mean(steps, "moe_routed_cv"), "admitted": mean(steps, "moe_load_max"),
        "drop": mean(steps, "moe_drop_frac"),
        "peer": statistics.mean(r.get("peer_wait_ms", 0.0) for r in late),
        "overlap": max(0.0, 1 - exposed / comm) if comm > 0 else 0.0,
        "step_ms": statistics.median(r["step_ms"] for r in late),
        "bias": (min(bias), max(bias)) if bias else None,
        "routed_curve": [(r["step"], r["moe_routed_max"]) for r in steps],
        "peer_curve": [(r["step"], r.get("peer_wait_ms", 0.0)) for r in steps],
    }


def main():
    runs_dir, prefix, bw = sys.argv[1], sys.argv[2], sys.argv[3]
    runs = collections.defaultdict(dict)
    for d in sorted(os.listdir(runs_dir)):
        if not os.path.exists(os.path.join(runs_dir, d, "done")):
            continue
        key, seed = d.rsplit("_s", 1)
        cfg, mode = key.rsplit("_", 1)
        runs[(cfg, mode)][int(seed)] = load(os.path.join(runs_dir, d))
    if not runs:
        sys.exit(f"no finished runs in {runs_dir}")
    cpu = subprocess.run("lscpu | sed -n 's/^Model name:\\s*//p'", shell=True, capture_output=True,
                         text=True).stdout.strip()
    day = __import__("datetime").date.today().isoformat()
    steps = max(r["steps"] for s in runs.values() for r in s.values())
    lines = [f"Machine: {cpu}, {os.cpu_count()} cores, {day}; `train` float32 CPU backend, 2 ranks through "
             f"train/launch (1 thread each, MoE All-to-Alls through shared memory) over a SIMULATED {bw} GB/s "
             f"link (50 us); {steps} steps, global batch 16 x 128 tokens; means over seeds "
             f"{', '.join(str(s) for s in sorted(next(iter(runs.values()))))}.",
             "",
             "| config | balancing | final val loss (mean) | per seed | routed max/mean (all steps) | "
             "routed max/mean (last quarter) | routed CV | admitted max/mean | dropped | peer wait ms/step | "
             "overlap | step ms | final bias range |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for cfg, cname in CONFIGS.items():
        for mode, mname in MODES.items():
            seeds = runs.get((cfg, mode))
            if not seeds:
                continue
            m = lambda k: statistics.mean(r[k] for r in seeds.values())
            per = ", ".join(f"s{s}: {r['val']:.4f}" for s, r in sorted(seeds.items()))
            biases = [r["bias"] for r in seeds.values() if r["bias"]]
            brange = (f"{min(b[0] for b in biases):+.3f} .. {max(b[1] for b in biases):+.3f}" if biases else "-")
            ov = f"{m('overlap'):.2f}" if cfg == "ts_scmoe_pos2" else "- (not overlapped)"
            lines.append(f"| {cname} | {mname} | {m('val'):.4f} | {per} | {m('routed'):.2f} | {m('routed_tail'):.2f} | "
                         f"{m('cv'):.2f} | {m('admitted'):.2f} | {100 * m('drop'):.1f}% | {m('peer'):.1f} | {ov} | "
                         f"{m('step_ms'):.0f} | {brange} |")
    with open(prefix + "_table.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return

    def smooth(points, w=10):
        ys = [y for _, y in points]
        return [x for x, _ in points], [statistics.mean(ys[max(0, i - w + 1):i + 1]) for i in range(len(ys))]

    def averaged(seeds, key):
        curves = [dict(r[key]) for r in seeds.values()]
        xs = sorted(set.intersection(*(set(c) for c in curves)))
        return [(x, statistics.mean(c[x] for c in curves)) for x in xs]

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colors = {"aux": "tab:blue", "bias": "tab:orange", "both": "tab:green"}
    styles = {"ts_scmoe_pos2": "-", "ts_moe_top2": "--"}
    for (cfg, mode), seeds in sorted(runs.items()):
        label = f"{CONFIGS[cfg]}, {MODES[mode]}"
        kw = dict(color=colors[mode], linestyle=styles[cfg], label=label)
        axes[0].plot(*smooth(averaged(seeds, "routed_curve")), **kw)
        axes[1].plot(*smooth(averaged(seeds, "peer_curve")), **kw)
        axes[2].plot(*zip(*averaged(seeds, "curve")), marker="o", ms=3, **kw)
    axes[0].set_ylabel("routed load max/mean, worst layer (10-step mean)")
    axes[0].axhline(1.0, color="gray", lw=0.5)
    axes[1].set_ylabel(f"peer wait ms per step (10-step mean; {bw} GB/s simulated)")
    axes[2].set_ylabel("validation loss (nats/byte)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    lo = min(r["val"] for s in runs.values() for r in s.values())
    axes[2].set_ylim(lo - 0.05, lo + 0.8)
    axes[2].legend(fontsize=7)
    fig.suptitle("Tiny Shakespeare, 2 ranks: auxiliary loss vs expert bias (mean over seeds)")
    fig.tight_layout()
    fig.savefig(prefix + ".png", dpi=110)
    print(f"wrote {prefix}_table.md and {prefix}.png")


if __name__ == "__main__":
    main()
