#!/usr/bin/env python3
"""Draw loss curves from one or more metrics.jsonl files to a PNG.

usage: plot_metrics.py RUN_OR_JSONL [RUN_OR_JSONL ...] -o out.png [--labels a,b] [--title T]
A run directory stands for its metrics.jsonl. Training loss is drawn thin, validation loss with markers.
Needs matplotlib (Debian: python3-matplotlib; run with /usr/bin/python3).
"""
import argparse
import json
import os
import sys


def load(path):
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    train, val = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"error: {path}:{n}: not JSON ({e})")
            if rec.get("loss") is not None:
                train.append((rec["step"], rec["loss"]))
            if rec.get("val_loss") is not None:
                val.append((rec["step"], rec["val_loss"]))
    return train, val


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--labels", default=None, help="comma-separated legend labels, one per run")
    ap.add_argument("--title", default="loss")
    args = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("error: matplotlib missing (apt install python3-matplotlib; use /usr/bin/python3)")
    labels = args.labels.split(",") if args.labels else [r.rstrip("/") for r in args.runs]
    if len(labels) != len(args.runs):
        sys.exit(f"error: --labels has {len(labels)} entries for {len(args.runs)} runs")
    fig, ax = plt.subplots(figsize=(8, 5))
    for run, label in zip(args.runs, labels):
        train, val = load(run)
        color = None
        if train:
            (line,) = ax.plot(*zip(*train), lw=0.7, alpha=0.5, label=f"{label} train")
            color = line.get_color()
        if val:
            ax.plot(*zip(*val), marker="o", ms=3, color=color, label=f"{label} val")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
