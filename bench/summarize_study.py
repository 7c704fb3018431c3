#!/usr/bin/env python3
"""Summarise bench/quality_study.sh runs: docs/quality_study.md (table) and .png (validation curves).

usage: summarize_study.py RUNS_DIR OUT_PREFIX
Each run directory is <config>_s<seed>/ with metrics.jsonl and config.yaml.
"""
import collections
import json
import os
import platform
import statistics
import subprocess
import sys


def load(run):
    val, tps = [], []
    for line in open(os.path.join(run, "metrics.jsonl")):
        r = json.loads(line)
        if r.get("val_loss") is not None:
            val.append((r["step"], r["val_loss"]))
        if r.get("tokens_per_s") is not None:
            tps.append(r["tokens_per_s"])
    return val, statistics.median(tps[5:] or tps)


def main():
    runs_dir, prefix = sys.argv[1], sys.argv[2]
    by_cfg = collections.defaultdict(dict)
    for d in sorted(os.listdir(runs_dir)):
        if not os.path.exists(os.path.join(runs_dir, d, "done")):
            continue
        cfg, seed = d.rsplit("_s", 1)
        by_cfg[cfg][int(seed)] = load(os.path.join(runs_dir, d))
    if not by_cfg:
        sys.exit(f"no finished runs in {runs_dir}")
    cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name:\\s*//p'"], capture_output=True,
                         text=True).stdout.strip() or platform.processor()
    rows = []
    for cfg, seeds in by_cfg.items():
        finals = {s: v[0][-1][1] for s, v in seeds.items()}
        steps = max(v[0][-1][0] for v in seeds.values())
        rows.append((statistics.mean(finals.values()), cfg, finals, steps,
                     statistics.mean(v[1] for v in seeds.values())))
    rows.sort()
    lines = ["| config | final val loss (mean) | per seed | steps | train tokens/s (CPU) |", "| --- | --- | --- | --- | --- |"]
    for mean, cfg, finals, steps, tps in rows:
        per = ", ".join(f"s{s}: {v:.4f}" for s, v in sorted(finals.items()))
        lines.append(f"| {cfg} | {mean:.4f} | {per} | {steps} | {tps:.0f} |")
    with open(prefix + "_table.md", "w") as f:
        f.write(f"Machine: {cpu}, {os.cpu_count()} cores; `train` float32 CPU backend.\n\n")
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for mean, cfg, finals, steps, tps in rows:
        curves = [dict(v[0]) for v in by_cfg[cfg].values()]
        xs = sorted(set.intersection(*(set(c) for c in curves)))
        ax.plot(xs, [statistics.mean(c[x] for c in curves) for x in xs], marker="o", ms=3, label=cfg)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/byte), mean over seeds")
    ax.set_title("Tiny Shakespeare, byte level: same active compute per token")
    ax.grid(alpha=0.3)
    ax.legend()
    lo = min(r[0] for r in rows)
    ax.set_ylim(lo - 0.05, lo + 0.6)
    fig.tight_layout()
    fig.savefig(prefix + ".png", dpi=120)
    print(f"wrote {prefix}_table.md and {prefix}.png")


if __name__ == "__main__":
    main()
