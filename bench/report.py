#!/usr/bin/env python3
"""Turns the benchmark scripts' runs into the tables and plots under docs/results/ (one tool for all).

    report.py quality RUNS_DIR OUT_PREFIX          bench/quality_study.sh: final validation losses, curves
    report.py overlap OUT_DIR BANDWIDTH...         bench/overlap.sh (SUFFIX and ROUTING from the environment)
    report.py offload OUT_DIR                      bench/offload.sh: latency, memory, migration (to stdout)
    report.py balance RUNS_DIR OUT_PREFIX GB_S     bench/balance_study.sh: aux loss vs expert bias

Every table opens with the machine it was measured on. The plots need matplotlib (skipped without it).
"""
import collections
import datetime
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys


# ---------------------------------------------------------------- shared helpers

def cpu_name():
    return subprocess.run("lscpu | sed -n 's/^Model name:\\s*//p'", shell=True, capture_output=True,
                          text=True).stdout.strip() or platform.processor()


def records(run):
    """A run's metrics.jsonl as a list of dicts."""
    return [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]


def finished_runs(runs_dir):
    """Run directories (names) that bench scripts marked done."""
    return [d for d in sorted(os.listdir(runs_dir)) if os.path.exists(os.path.join(runs_dir, d, "done"))]


def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print("matplotlib missing: no plot")
        return None


def write(path, lines):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------- quality: bench/quality_study.sh

def quality(runs_dir, prefix):
    """Per config (<config>_s<seed>/): final validation loss per seed and mean, train tokens/s; curves."""
    by_cfg = collections.defaultdict(dict)
    for d in finished_runs(runs_dir):
        cfg, seed = d.rsplit("_s", 1)
        rs = records(os.path.join(runs_dir, d))
        val = [(r["step"], r["val_loss"]) for r in rs if r.get("val_loss") is not None]
        tps = [r["tokens_per_s"] for r in rs if r.get("tokens_per_s") is not None]
        by_cfg[cfg][int(seed)] = (val, statistics.median(tps[5:] or tps))
    if not by_cfg:
        sys.exit(f"no finished runs in {runs_dir}")
    rows = []
    for cfg, seeds in by_cfg.items():
        finals = {s: v[0][-1][1] for s, v in seeds.items()}
        steps = max(v[0][-1][0] for v in seeds.values())
        rows.append((statistics.mean(finals.values()), cfg, finals, steps,
                     statistics.mean(v[1] for v in seeds.values())))
    rows.sort()
    lines = [f"Machine: {cpu_name()}, {os.cpu_count()} cores; `train` float32 CPU backend.", "",
             "| config | final val loss (mean) | per seed | steps | train tokens/s (CPU) |",
             "| --- | --- | --- | --- | --- |"]
    for mean, cfg, finals, steps, tps in rows:
        per = ", ".join(f"s{s}: {v:.4f}" for s, v in sorted(finals.items()))
        lines.append(f"| {cfg} | {mean:.4f} | {per} | {steps} | {tps:.0f} |")
    write(prefix + "_table.md", lines)
    print("\n".join(lines[2:]))
    plt = pyplot()
    if not plt:
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


# ---------------------------------------------------------------- overlap: bench/overlap.sh

OVERLAP_NAMES = {"ts_scmoe_pos2": "ScMoE Pos-2 (overlapped)", "ts_moe_top2": "top-2 MoE",
                 "ts_moe_top2_pipelined": "top-2 MoE, pipelined (4 chunks)", "ts_moe_top1": "top-1 MoE",
                 "ts_shared_expert": "shared expert + top-1"}


def overlap_stats(d):
    """Over steps 7-16 (after the auto slot choice at step 3): median step time; communication summed
    (comm, exposed, peer wait per step are sums / steps; overlap = 1 - sum exposed / sum comm, so a bad
    step weighs by its time); forward time per validation batch (steps 8 and 16)."""
    recs = records(d)
    evals = [r["eval_forward_ms"] for r in recs if "eval_forward_ms" in r]
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


def overlap(out, bws, docs):
    suffix, routing = os.environ["SUFFIX"], os.environ["ROUTING"]

    def transport(d):  # how the run's MoE exchanges travelled, from its log
        m = re.search(r"MoE All-to-Alls ([^)]*)\)", open(d + ".log").read())
        return m.group(1) if m else "?"
    first = os.path.join(out, "ts_scmoe_pos2_bw" + bws[0])
    day = datetime.date.fromtimestamp(os.path.getmtime(first + ".log")).isoformat()
    lines = [f"Machine: {cpu_name()}, 2 cores, {day}; 2 ranks, 1 thread each, MoE All-to-Alls {transport(first)}; "
             f"{routing} routing; links SIMULATED. Step and forward times: medians; communication: per-step "
             "means over steps 7-16, overlap from their sums.", "",
             "| link (GB/s) | config | train step ms | train speed-up vs top-2 | forward ms | inference speed-up vs top-2 | comm ms | exposed ms | overlap | peer wait ms | transfer overlap | top-2 comm share |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    plot = {}
    for bw in bws:
        s = {c: overlap_stats(os.path.join(out, f"{c}_bw{bw}")) for c in OVERLAP_NAMES}
        base = s["ts_moe_top2"]
        share = base["comm"] / base["step"]
        for c, label in OVERLAP_NAMES.items():
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
    table, plot_file = f"{docs}/overlap_table{suffix}.md", f"{docs}/overlap{suffix}.png"
    write(table, lines)
    plt = pyplot()
    if not plt:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c, pts in plot.items():
        pts.sort()
        ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], marker="o", label=OVERLAP_NAMES[c])
    ax.set_xlabel("communication share of top-2 MoE's step (%), simulated link")
    ax.set_ylabel("training speed-up over top-2 MoE")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    ax.set_title(f"{routing} routing")
    fig.savefig(plot_file, dpi=120)
    print(f"wrote {table} and {plot_file}")


# ---------------------------------------------------------------- offload: bench/offload.sh

def offload(out):
    """Per (architecture, link bandwidth, migration mode), from the generate_stats lines of
    OUT/gen_*.log: per-token latency median and p90 (medians over the repetitions), peak device memory
    and its cut against all experts resident, bytes migrated per position computed, cache hit rate,
    exposed transfer time per position, the latency added over the resident run and, for async /
    speculative, that added latency as a share of blocking migration's."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(out, "gen_*.log"))):
        m = re.match(r"gen_(\w+?)_(resident|blocking|async|speculative)(?:_bw([\d.]+))?_r(\d+)\.log$",
                     os.path.basename(path))
        if not m:
            continue
        arch, mode, bw, _ = m.groups()
        line = next(l for l in open(path) if l.startswith("generate_stats "))
        runs.setdefault((arch, mode, bw), []).append(json.loads(line[len("generate_stats "):]))
    if not runs:
        sys.exit(f"no gen_*.log with a generate_stats line in {out}: run bench/offload.sh first")
    med = lambda rs, key: statistics.median(r[key] for r in rs)
    cpu = cpu_name()
    reps = max(len(v) for v in runs.values())
    any_run = next(iter(runs.values()))[0]
    offloaded = next((v[0] for (a, m, bw), v in runs.items() if bw), any_run)
    loadavg = ""
    if os.path.exists(os.path.join(out, "loadavg")):
        loadavg = (" Load average (1 min) before / after: " +
                   " / ".join(open(os.path.join(out, "loadavg")).read().split()) + ".")
    if any_run.get("device") == "cuda":
        gpu = subprocess.run("nvidia-smi --query-gpu=name --format=csv,noheader | head -1", shell=True,
                             capture_output=True, text=True).stdout.strip() or "unknown GPU"
        head = (f"Machine: {gpu} (host {cpu}); `train generate` on the CUDA backend, fp32, "
                f"{any_run['new_tokens']} new tokens after a {any_run['prompt_tokens']}-token prompt, medians over "
                f"{reps} repetitions. Routed experts in pinned host memory, copied over the machine's real "
                f"host-to-device link (link column 0) on a copy stream; "
                f"{offloaded['cache_slots']} of {offloaded['num_experts']} experts per MoE layer cached.")
    else:
        head = (f"Machine: {cpu}, 2 cores; `train generate`, 1 compute thread (the copy stream's thread on the "
                f"other core), float32, {any_run['new_tokens']} new tokens after a {any_run['prompt_tokens']}-token "
                f"prompt, medians over {reps} repetitions. Host-to-device links SIMULATED (+10 us per transfer); "
                f"{offloaded['cache_slots']} of {offloaded['num_experts']} experts per MoE layer cached.{loadavg}")
    lines = [head, "",
             "| model | link GB/s | migration | latency median ms | p90 ms | peak device MiB | memory cut | "
             "migrated MiB/position | hit rate | exposed ms/position | added latency ms | added vs blocking |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    names = {"scmoe": "ScMoE Pos-2 (SE + top-1)", "moe": "top-2 MoE"}
    for arch in ("scmoe", "moe"):
        res = runs.get((arch, "resident", None))
        if not res:
            continue
        base = med(res, "latency_ms_median")
        lines.append(f"| {names[arch]} | - | all resident | {base:.3f} | {med(res, 'latency_ms_p90'):.3f} | "
                     f"{med(res, 'peak_device_bytes') / 2**20:.1f} | - | - | - | - | - | - |")
        for bw in sorted({bw for (a, _, bw) in runs if a == arch and bw}, key=float):
            blocking = runs.get((arch, "blocking", bw))
            added_blocking = med(blocking, "latency_ms_median") - base if blocking else None
            for mode in ("blocking", "async", "speculative"):
                rs = runs.get((arch, mode, bw))
                if not rs:
                    continue
                positions = rs[0]["positions"]  # computed: the prompt's and every new token's but the last
                lat = med(rs, "latency_ms_median")
                added = lat - base
                share = "-" if mode == "blocking" or not added_blocking else f"{100 * added / added_blocking:.0f}%"
                lines.append(
                    f"| {names[arch]} | {bw} | {mode} | {lat:.3f} | {med(rs, 'latency_ms_p90'):.3f} | "
                    f"{med(rs, 'peak_device_bytes') / 2**20:.1f} | {100 * med(rs, 'memory_cut'):.0f}% | "
                    f"{med(rs, 'bytes_migrated') / positions / 2**20:.2f} | {100 * med(rs, 'hit_rate'):.0f}% | "
                    f"{med(rs, 'exposed_transfer_ms') / positions:.3f} | {added:+.3f} | {share} |")
    print("\n".join(lines))


# ---------------------------------------------------------------- balance: bench/balance_study.sh

BALANCE_MODES = {"aux": "aux loss only", "bias": "expert bias, aux off", "both": "aux loss + expert bias"}
BALANCE_CONFIGS = {"ts_scmoe_pos2": "ScMoE Pos-2 (top-1)", "ts_moe_top2": "top-2 MoE"}


def balance_stats(run):
    """The final validation loss; the worst MoE layer's expert load as max/mean before capacity
    ("routed": the router's choices, what balancing acts on) and after it ("admitted"), over all steps
    and the last quarter; the rows capacity dropped; from step 7 on, the peer wait per step, the overlap
    1 - sum exposed / sum communication and the median step time; the biases' final range."""
    rs = records(run)
    val = [(r["step"], r["val_loss"]) for r in rs if "val_loss" in r]
    steps = [r for r in rs if "step_ms" in r]
    n = len(steps)
    tail, late = steps[n - n // 4:], steps[6:]
    comm = sum(r.get("comm_ms", 0.0) for r in late)
    exposed = sum(r.get("exposed_comm_ms", 0.0) for r in late)
    bias = [v for k, v in steps[-1].items() if k.endswith("_bias_min") or k.endswith("_bias_max")]
    mean = lambda rows, k: statistics.mean(r[k] for r in rows)
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


def balance(runs_dir, prefix, bw):
    runs = collections.defaultdict(dict)
    for d in finished_runs(runs_dir):
        key, seed = d.rsplit("_s", 1)
        cfg, mode = key.rsplit("_", 1)
        runs[(cfg, mode)][int(seed)] = balance_stats(os.path.join(runs_dir, d))
    if not runs:
        sys.exit(f"no finished runs in {runs_dir}")
    steps = max(r["steps"] for s in runs.values() for r in s.values())
    seeds = ", ".join(str(s) for s in sorted(next(iter(runs.values()))))
    lines = [f"Machine: {cpu_name()}, {os.cpu_count()} cores, {datetime.date.today().isoformat()}; `train` float32 "
             f"CPU backend, 2 ranks through train/launch (1 thread each, MoE All-to-Alls through shared memory) "
             f"over a SIMULATED {bw} GB/s link (50 us); {steps} steps, global batch 16 x 128 tokens; means over "
             f"seeds {seeds}.", "",
             "| config | balancing | final val loss (mean) | per seed | routed max/mean (all steps) | "
             "routed max/mean (last quarter) | routed CV | admitted max/mean | dropped | peer wait ms/step | "
             "overlap | step ms | final bias range |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for cfg, cname in BALANCE_CONFIGS.items():
        for mode, mname in BALANCE_MODES.items():
            seeds_ = runs.get((cfg, mode))
            if not seeds_:
                continue
            m = lambda k: statistics.mean(r[k] for r in seeds_.values())
            per = ", ".join(f"s{s}: {r['val']:.4f}" for s, r in sorted(seeds_.items()))
            biases = [r["bias"] for r in seeds_.values() if r["bias"]]
            brange = f"{min(b[0] for b in biases):+.3f} .. {max(b[1] for b in biases):+.3f}" if biases else "-"
            ov = f"{m('overlap'):.2f}" if cfg == "ts_scmoe_pos2" else "- (not overlapped)"
            lines.append(f"| {cname} | {mname} | {m('val'):.4f} | {per} | {m('routed'):.2f} | "
                         f"{m('routed_tail'):.2f} | {m('cv'):.2f} | {m('admitted'):.2f} | {100 * m('drop'):.1f}% | "
                         f"{m('peer'):.1f} | {ov} | {m('step_ms'):.0f} | {brange} |")
    write(prefix + "_table.md", lines)
    print("\n".join(lines))
    plt = pyplot()
    if not plt:
        return

    def smooth(points, w=10):
        ys = [y for _, y in points]
        return [x for x, _ in points], [statistics.mean(ys[max(0, i - w + 1):i + 1]) for i in range(len(ys))]

    def averaged(seeds_, key):
        curves = [dict(r[key]) for r in seeds_.values()]
        xs = sorted(set.intersection(*(set(c) for c in curves)))
        return [(x, statistics.mean(c[x] for c in curves)) for x in xs]

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colors = {"aux": "tab:blue", "bias": "tab:orange", "both": "tab:green"}
    styles = {"ts_scmoe_pos2": "-", "ts_moe_top2": "--"}
    for (cfg, mode), seeds_ in sorted(runs.items()):
        kw = dict(color=colors[mode], linestyle=styles[cfg], label=f"{BALANCE_CONFIGS[cfg]}, {BALANCE_MODES[mode]}")
        axes[0].plot(*smooth(averaged(seeds_, "routed_curve")), **kw)
        axes[1].plot(*smooth(averaged(seeds_, "peer_curve")), **kw)
        axes[2].plot(*zip(*averaged(seeds_, "curve")), marker="o", ms=3, **kw)
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


def main():
    usage = __doc__.split("\n\n")[1]
    if len(sys.argv) < 2:
        sys.exit("usage:\n" + usage)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "quality" and len(args) == 2:
        quality(*args)
    elif cmd == "overlap" and len(args) >= 2:
        overlap(args[0], args[1:], os.environ.get("DOCS", "docs/results"))
    elif cmd == "offload" and len(args) == 1:
        offload(args[0])
    elif cmd == "balance" and len(args) == 3:
        balance(*args)
    else:
        sys.exit("usage:\n" + usage)


if __name__ == "__main__":
    main()
