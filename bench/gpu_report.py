#!/usr/bin/env python3
"""Turns a bench/gpu.sh run directory into the results section of docs/gpu_benchmarks.md.

    python3 bench/gpu_report.py RUN_DIR [--doc docs/gpu_benchmarks.md] [--warmup-steps 5]

Reads what bench/gpu.sh left in RUN_DIR (meta.env, device.txt, stages.tsv, tests.txt, sanitizer.tsv,
kernels.md, ours_<arch>_<precision>/metrics.jsonl + .log, torch_<arch>_<mode>_<dtype>_<attention>.txt,
overlap_<true|false>/metrics.jsonl),
prints the results as Markdown and, with --doc, replaces the text between the markers
`<!-- gpu-results:begin -->` and `<!-- gpu-results:end -->` of that file. Stdlib only.

MFU = tokens/s x flops_per_token / peak, flops_per_token = 6 x parameters + 12 x n_layer x seq_len x
d_model (as bench/torch_train.py counts it), peak = the device's dense bf16 tensor rate for every row;
fp32 rows also give the share of the fp32 FMA rate (neither side's fp32 GEMMs use TF32).
"""

import argparse
import glob
import json
import os
import re
import statistics
import sys

BEGIN = "<!-- gpu-results:begin -->"
END = "<!-- gpu-results:end -->"
PRECISION_OF_DTYPE = {"float32": "fp32", "bfloat16": "bf16"}


def read_kv(path, sep=None):
    """key value lines (sep None: first whitespace; '=': env style)."""
    out = {}
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            if sep:
                k, _, v = line.partition(sep)
            else:
                parts = line.split(None, 1)
                k, v = parts[0], parts[1] if len(parts) > 1 else ""
            out[k.strip()] = v.strip()
    return out


def read_tsv(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]


def fnum(d, key, default=0.0):
    try:
        return float(d.get(key, default))
    except ValueError:
        return default


def ours_result(run, arch, prec, warmup_steps):
    """tokens/s (median over steps after warm-up), step ms, parameters; or a reason it is missing."""
    base = os.path.join(run, f"ours_{arch}_{prec}")
    if os.path.exists(base + ".skip"):
        return {"note": open(base + ".skip").read().strip()}
    log = base + ".log"
    metrics = os.path.join(base, "metrics.jsonl")
    if not os.path.exists(metrics):
        return {"note": "failed: see " + os.path.basename(log) if os.path.exists(log) else "not run"}
    toks, ms = [], []
    with open(metrics) as f:
        for line in f:
            r = json.loads(line)
            if "tokens_per_s" in r and r.get("step", 0) > warmup_steps:
                toks.append(r["tokens_per_s"])
                ms.append(r.get("step_ms", 0.0))
    params = None
    if os.path.exists(log):
        m = re.search(r"model: \S+, (\d+) parameters", open(log, errors="replace").read())
        params = int(m.group(1)) if m else None
    if not toks:
        return {"note": "no timed steps in metrics.jsonl (too few steps?)"}
    return {"tok_s": statistics.median(toks), "ms": statistics.median(ms), "steps": len(toks), "params": params}


def overlap_result(run, mode, warmup_steps):
    """The overlap stage's run with comm.overlap `mode`: medians of step ms, tokens/s, comm, exposed, overlap."""
    base = os.path.join(run, f"overlap_{mode}")
    metrics = os.path.join(base, "metrics.jsonl")
    if not os.path.exists(metrics):
        return {"note": "failed: see " + os.path.basename(base) + ".log"} if os.path.exists(base + ".log") else None
    rows = []
    with open(metrics) as f:
        for line in f:
            r = json.loads(line)
            if "tokens_per_s" in r and r.get("step", 0) > warmup_steps:
                rows.append(r)
    if not rows:
        return {"note": "no timed steps in metrics.jsonl"}
    med = lambda k: statistics.median(r.get(k, 0.0) for r in rows)
    return {"ms": med("step_ms"), "tok_s": med("tokens_per_s"), "comm": med("comm_ms"),
            "exposed": med("exposed_comm_ms"), "overlap": med("overlap")}


def torch_result(path):
    if not os.path.exists(path):
        return None
    text = open(path, errors="replace").read()
    m = re.search(r"torch median_tokens_per_s ([\d.]+) median_ms_per_step ([\d.]+) flops_per_token (\d+)", text)
    if not m:
        lines = [l for l in text.strip().splitlines() if l.strip()]
        reason = lines[-1][:160] if lines else "no output"
        if "timed out" in text:
            reason = "timed out"
        return {"note": "failed: " + re.sub(r"^torch failed on cuda \([^)]*\): ", "", reason)}
    res = {"tok_s": float(m.group(1)), "ms": float(m.group(2)), "fpt": int(m.group(3))}
    v = re.search(r"^torch (\S+) \(CUDA ([^)]*)\)", text, re.M)
    if v:
        res["version"] = f"{v.group(1)} (CUDA {v.group(2)})"
    mem = re.search(r"peak memory ([\d.]+) GiB", text)
    if mem:
        res["mem_gib"] = float(mem.group(1))
    return res


def fmt_int(x):
    return f"{x:,.0f}"


def pct(x):
    return f"{x:.1f}%"


def build_report(run, warmup_steps):
    meta = read_kv(os.path.join(run, "meta.env"), sep="=")
    dev = read_kv(os.path.join(run, "device.txt"))
    L, C, T = int(meta.get("n_layer", 12)), int(meta.get("d_model", 768)), int(meta.get("seq_len", 1024))
    V, F, H = int(meta.get("vocab_size", 50304)), int(meta.get("d_ff", 3072)), int(meta.get("n_head", 12))
    batch = int(meta.get("batch", 0))
    peak_bf16 = fnum(dev, "peak_bf16_tflops") * 1e12
    peak_fp32 = fnum(dev, "peak_fp32_tflops") * 1e12
    out = []
    w = out.append

    name = dev.get("device", meta.get("gpu_name", "unknown GPU"))
    w(f"Measured on **{name}** ({meta.get('date', '?')}).")
    w("")
    w("| | |")
    w("| --- | --- |")
    w(f"| device | {name}, compute capability {dev.get('compute_capability', '?')}, {dev.get('sms', '?')} SMs "
      f"at up to {dev.get('sm_clock_ghz', '?')} GHz, {dev.get('memory_gib', '?')} GiB, L2 {dev.get('l2_mib', '?')} MiB |")
    w(f"| driver / CUDA | driver {meta.get('driver_version', '?')} (supports CUDA {dev.get('driver_cuda', '?')}), "
      f"runtime CUDA {dev.get('runtime_cuda', '?')}, nvcc {meta.get('nvcc_version', '?')}, "
      f"built for sm_{meta.get('cuda_arch', '?')} |")
    w(f"| peaks used | memory {fnum(dev, 'peak_bw_gb_s'):.0f} GB/s (2 x memory clock x bus width); dense bf16 tensor "
      f"{fnum(dev, 'peak_bf16_tflops'):.0f} TFLOP/s, fp32 FMA {fnum(dev, 'peak_fp32_tflops'):.1f} TFLOP/s "
      f"({dev.get('peak_source', '?')}) |")
    w(f"| PyTorch | {meta.get('torch_version', 'not available')} |")
    w(f"| source | commit {meta.get('commit', '?')}; `bench/gpu.sh {meta.get('args', '').strip()}` |")
    w("")

    # ---- the training table
    archs = meta.get("archs", "dense").split()
    w(f"### Training throughput: GPT-2 small shape, batch {batch} x {T} tokens")
    w("")
    w(f"L={L}, C={C}, H={H}, F={F}, T={T}, V={V}; AdamW + clipping every step. Ours: `train` with "
      f"`train.device=cuda`, {meta.get('steps', '?')} steps on Tiny Shakespeare (byte tokens), median tokens/s over "
      f"the steps after the first {warmup_steps}. PyTorch: `bench/torch_train.py --device cuda`, random tokens, "
      f"{meta.get('torch_warmup', '?')} warm-up + {meta.get('torch_steps', '?')} timed steps, median. MFU = tokens/s x "
      f"(6 x params + 12 x L x T x C) / dense bf16 peak; the last-but-one column holds each row to its own "
      f"precision's peak (fp32: the FMA rate, since no fp32 GEMM here uses TF32).")
    w("")
    w("| model | implementation | precision | tokens/s | ms/step | MFU (bf16 peak) | % of own-precision peak "
      "| ours (same precision) / this |")
    w("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    summary = {}
    for arch in archs:
        ours = {p: ours_result(run, arch, p, warmup_steps) for p in ("fp32", "bf16")}
        if all("tok_s" not in r for r in ours.values()) and ours["fp32"]["note"] == ours["bf16"]["note"]:
            w(f"| {arch} | **ours** (`train`, CUDA) | fp32, bf16 | — | — | — | — | {ours['fp32']['note']} |")
        for prec, r in ours.items():
            if "tok_s" not in r and ours["fp32"].get("note") == ours["bf16"].get("note"):
                continue
            if "tok_s" in r:
                params = r.get("params")
                fpt = 6 * params + 12 * L * T * C if params else None
                r["fpt"] = fpt
                mfu = r["tok_s"] * fpt / peak_bf16 * 100 if fpt and peak_bf16 else None
                own = (r["tok_s"] * fpt / (peak_bf16 if prec == "bf16" else peak_fp32) * 100
                       if fpt and peak_fp32 and peak_bf16 else None)
                r["mfu"] = mfu
                w(f"| {arch} | **ours** (`train`, CUDA) | {prec} | {fmt_int(r['tok_s'])} | {r['ms']:.1f} | "
                  f"{pct(mfu) if mfu is not None else '?'} | {pct(own) if own is not None else '?'} | — |")
            else:
                w(f"| {arch} | **ours** (`train`, CUDA) | {prec} | — | — | — | — | {r['note']} |")
        summary[arch] = {"ours": ours, "torch": {}}
        runs = []
        for path in glob.glob(os.path.join(run, f"torch_{arch}_*.txt")):
            stem = os.path.basename(path)[len(f"torch_{arch}_"):-4]
            parts = stem.split("_", 2)
            if len(parts) == 3:
                runs.append((parts, path))
        # fp32 before bf16, eager before compile, the reference attention before SDPA
        runs.sort(key=lambda x: (x[0][1] != "float32", x[0][0] != "eager", x[0][2] != "reference"))
        for (mode, dtype, attn), path in runs:
            prec = PRECISION_OF_DTYPE.get(dtype, dtype)
            r = torch_result(path)
            label = ("PyTorch eager" if mode == "eager" else "PyTorch torch.compile") + (
                ", SDPA attention" if attn == "sdpa" else "")
            if not r or "tok_s" not in r:
                w(f"| {arch} | {label} | {prec} | — | — | — | — | {r['note'] if r else 'not run'} |")
                continue
            mfu = r["tok_s"] * r["fpt"] / peak_bf16 * 100 if peak_bf16 else None
            own_peak = peak_bf16 if prec == "bf16" else peak_fp32
            own = r["tok_s"] * r["fpt"] / own_peak * 100 if own_peak else None
            o = ours.get(prec, {})
            ratio = f"{o['tok_s'] / r['tok_s']:.2f}x" if "tok_s" in o else "—"
            w(f"| {arch} | {label} | {prec} | {fmt_int(r['tok_s'])} | {r['ms']:.1f} | "
              f"{pct(mfu) if mfu is not None else '?'} | {pct(own) if own is not None else '?'} | {ratio} |")
            summary[arch]["torch"][(mode, prec, attn)] = r
    w("")

    # ---- the targets
    d = summary.get("dense")
    if d:
        w("Targets (issue 6):")
        w("")
        for prec in ("bf16", "fp32"):
            o = d["ours"].get(prec, {})
            compiled = [(r["tok_s"], attn) for (mode, p, attn), r in d["torch"].items()
                        if mode == "compile" and p == prec]
            if "tok_s" not in o or not compiled:
                w(f"- faster than torch.compile, dense {prec}: not measured in this run")
                continue
            best, attn = max(compiled)
            ok = o["tok_s"] > best
            w(f"- faster than torch.compile, dense {prec}: ours {fmt_int(o['tok_s'])} vs the best torch.compile "
              f"({'SDPA' if attn == 'sdpa' else 'reference'} attention) {fmt_int(best)} tokens/s = "
              f"{o['tok_s'] / best:.2f}x: **{'met' if ok else 'not met'}**")
        o = d["ours"].get("bf16", {})
        if o.get("mfu") is not None:
            h100 = "h100" in name.lower()
            verdict = ("met" if o["mfu"] >= 50 else "not met") if h100 and T == 1024 else \
                "not applicable on this device / shape (the target is for an H100 at T=1024)"
            w(f"- >= 50% MFU, dense bf16, GPT-2 small, T=1024 on an H100: {o['mfu']:.1f}%: **{verdict}**")
        else:
            w("- >= 50% MFU, dense bf16: not measured in this run")
        w("")

    # ---- the ScMoE overlap on the device
    ov = {m: overlap_result(run, m, warmup_steps) for m in ("true", "false")}
    if any(ov.values()):
        w(f"### ScMoE overlap on the device (one rank, simulated link {meta.get('link_gb_s', '?')} GB/s + 20 us)")
        w("")
        w("GPT-2-small ScMoE Pos-2 (cg1, 8 experts, top-1, MoE every 2nd block), bf16, expert slot auto. "
          "`comm.overlap true`: the dispatch and combine on a high-priority communication stream, ordered by "
          "CUDA events; `false`: every exchange in order on the compute stream. The link is SIMULATED: a host "
          "function holds the exchange's stream as long as the link would take. Overlap = 1 - exposed / "
          "communication time, both from CUDA timing events, medians over the steps after warm-up.")
        w("")
        w("| comm.overlap | step ms | tokens/s | comm ms / step | exposed ms / step | overlap |")
        w("| --- | --- | --- | --- | --- | --- |")
        for m in ("true", "false"):
            r = ov[m]
            if not r:
                w(f"| {m} | not run | | | | |")
            elif "note" in r:
                w(f"| {m} | {r['note']} | | | | |")
            else:
                w(f"| {m} | {r['ms']:.1f} | {fmt_int(r['tok_s'])} | {r['comm']:.1f} | {r['exposed']:.1f} | "
                  f"{r['overlap']:.2f} |")
        if ov["true"] and ov["false"] and "ms" in ov["true"] and "ms" in ov["false"]:
            w("")
            w(f"Overlapped step {ov['false']['ms'] / ov['true']['ms']:.2f}x as fast as the sequential one.")
        w("")

    # ---- kernels
    kpath = os.path.join(run, "kernels.md")
    w(f"### Per-kernel timings (`bench_gpu_kernels`, batch {meta.get('kernel_batch', '?')} x {T})")
    w("")
    if os.path.exists(kpath):
        w("Median of the timed repetitions (up to 25; 10 with --quick) after warm-up, L2 flushed before each; "
          "bytes = the launcher's inputs read and outputs written once; floor = max(bytes / peak bandwidth, FLOPs / peak rate); `floor / time` is "
          "the share of that floor reached. GEMM FLOPs are held to the bf16 tensor rate (bf16) or the fp32 FMA "
          "rate (fp32, the SIMT twin, flash attention). CSV: kernels.csv in the run directory.")
        w("")
        w(open(kpath).read().rstrip())
    else:
        w("Not run.")
    w("")

    # ---- correctness
    w("### Correctness on this GPU")
    w("")
    tests = os.path.join(run, "tests.txt")
    if os.path.exists(tests):
        text = open(tests, errors="replace").read()
        m = re.search(r"(\d+)% tests passed, (\d+) tests failed out of (\d+)", text)
        line = m.group(0) if m else "no ctest summary (see tests.txt)"
        listed = re.findall(r"^\s*\d+ - (\S+) \(([^)]*)\)", text, re.M)
        failed = [f"{n} ({why})" for n, why in listed if why != "Skipped"]
        skipped = [n for n, why in listed if why == "Skipped"]
        w(f"- `ctest -L gpu` (native kernel suites, whole-model CUDA vs CPU): {line}"
          + (f"; failed: {', '.join(failed)}" if failed else "")
          + (f"; skipped (no device seen?): {', '.join(skipped)}" if skipped else ""))
    else:
        w("- `ctest -L gpu`: not run")
    san = read_tsv(os.path.join(run, "sanitizer.tsv"))
    if san:
        by_tool = {}
        for row in san:
            tool, binary, status = row[0], row[1], row[2]
            by_tool.setdefault(tool, []).append(f"{binary} {status}")
        for tool, items in by_tool.items():
            w(f"- compute-sanitizer {tool}: " + ", ".join(items))
    else:
        w("- compute-sanitizer: " + meta.get("sanitizer_note", "not run"))
    w("")

    stages = read_tsv(os.path.join(run, "stages.tsv"))
    if stages:
        w("Stage times: " + ", ".join(f"{s[0]} {float(s[2]):.0f} s ({s[1]})" for s in stages if len(s) >= 3) + ".")
        w("")
    return "\n".join(out) + "\n"


def replace_section(doc, body):
    text = open(doc).read()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc}: markers {BEGIN} / {END} not found")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(doc, "w") as f:
        f.write(head + BEGIN + "\n" + body + END + tail)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--doc", help="Markdown file whose results section to replace")
    ap.add_argument("--warmup-steps", type=int, default=5, help="our steps left out of the median")
    args = ap.parse_args(argv)
    body = build_report(args.run_dir, args.warmup_steps)
    print(body)
    if args.doc:
        replace_section(args.doc, body)
        print(f"wrote the results into {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
