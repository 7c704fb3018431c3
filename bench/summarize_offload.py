#!/usr/bin/env python3
"""Summarises bench/offload.sh: one Markdown table from the generate_stats lines of runs/offload/gen_*.log.

Per (architecture, link bandwidth, migration mode): per-token latency median and p90 (medians over the
repetitions), peak device memory and its cut against all experts resident, bytes migrated per position computed,
cache hit rate, exposed transfer time per position, and the latency added over the resident run; for
async / speculative, that added latency as a share of blocking migration's.
"""
import glob
import json
import os
import re
import statistics
import subprocess
import sys


def load(out):
    runs = {}
    for path in sorted(glob.glob(os.path.join(out, "gen_*.log"))):
        m = re.match(r"gen_(\w+?)_(resident|blocking|async|speculative)(?:_bw([\d.]+))?_r(\d+)\.log$", os.path.basename(path))
        if not m:
            continue
        arch, mode, bw, _ = m.groups()
        line = next(l for l in open(path) if l.startswith("generate_stats "))
        runs.setdefault((arch, mode, bw), []).append(json.loads(line[len("generate_stats "):]))
    return runs


def med(rs, key):
    return statistics.median(r[key] for r in rs)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "runs/offload"
    runs = load(out)
    if not runs:
        sys.exit(f"no gen_*.log with a generate_stats line in {out}: run bench/offload.sh first")
    cpu = subprocess.run("lscpu | sed -n 's/^Model name:\\s*//p'", shell=True, capture_output=True,
                         text=True).stdout.strip()
    reps = max(len(v) for v in runs.values())
    any_run = next(iter(runs.values()))[0]
    offloaded = next((v[0] for (a, m, bw), v in runs.items() if bw), any_run)
    loadavg = ""
    if os.path.exists(os.path.join(out, "loadavg")):
        loadavg = " Load average (1 min) before / after: " + " / ".join(open(os.path.join(out, "loadavg")).read().split()) + "."
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
        bws = sorted({bw for (a, _, bw) in runs if a == arch and bw}, key=float)
        for bw in bws:
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


if __name__ == "__main__":
    main()
