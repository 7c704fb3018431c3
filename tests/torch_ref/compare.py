#!/usr/bin/env python3
"""Compare a C++ dump (params, batch, loss, grads) with the PyTorch reference in gpt.py.

Usage: compare.py DUMP.safetensors [--ref-dtype dump|float64]
                  [--z-loss square_of_mean|mean_of_square]
       compare.py --self-test
Exit status: 0 all checks pass, 1 any check fails, 77 torch/numpy missing (ctest SKIP_RETURN_CODE).

Error measure per tensor: max|dump - ref| / max(max|ref|, tiny), i.e. relative to the tensor's
scale rather than per element, so that near-zero entries do not dominate.

Checked: `loss` (the mean cross-entropy), `aux_loss` (F64 [1], the MoE layers' summed
coefficient-weighted aux + z losses; required for MoE archs, optional for dense where it must be 0)
and `grad.<param>` for every parameter, the gradient of the objective cross-entropy + aux_loss.
The report also gives, per MoE layer, the reference's routing: load per expert before capacity,
the capacity, dropped assignments and the smallest top-k probability margin (a near-tie there
makes a different expert choice, hence a large mismatch, legitimate in float32).
"""

import argparse
import math
import os
import subprocess
import sys
import tempfile

try:
    # torch first: where both are missing, torch is the package to name.
    import torch
    import numpy as np
except ImportError as e:
    _name = getattr(e, "name", None) or "torch"
    _pkg = "python3-numpy" if _name == "numpy" else "python3-torch"
    print(f"SKIP: {_name} not importable (install {_pkg})")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt  # noqa: E402
import st  # noqa: E402

TOLERANCE = {"float64": 1e-8, "float32": 1e-5}  # issue 2 asks 1e-5 relative; float32 dumps reach ~2e-6
TORCH_DTYPE = {"float64": torch.float64, "float32": torch.float32}
TINY = 1e-30
REQUIRED = ("inputs", "targets", "loss")
RESERVED = REQUIRED + ("aux_loss",)  # aux_loss: required for MoE archs, optional for dense
# A top-k probability margin below this (by the dump's dtype) is reported as a possible flip.
NEAR_TIE = {torch.float64: 1e-9, torch.float32: 1e-5}


def rel_error(got, ref):
    """(max abs error, max |ref|, relative error); NaN/inf anywhere counts as a failure (inf)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if not (np.all(np.isfinite(got)) and np.all(np.isfinite(ref))):
        return float("inf"), float("nan"), float("inf")
    abs_err = float(np.max(np.abs(got - ref))) if got.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return abs_err, scale, abs_err / max(scale, TINY)


def _tap_desc(cfg, l):
    arch = cfg["arch"]
    if arch in ("moe", "shared_expert"):
        return "u (own LN2 output)"
    return {1: "NormMoE(h) of this block's input", 2: f"u of block {l - 1}",
            3: f"NormMoE(h) of block {l - 1}'s input"}[cfg["position"]]


def reference(cfg, params, inputs, targets, compute_dtype, z_form=None):
    """The reference model after forward + backward on the batch (grads in model.p[n].grad)."""
    old = gpt.Z_LOSS_FORM
    gpt.Z_LOSS_FORM = z_form or old
    try:
        model = gpt.GPT(cfg, dtype=compute_dtype)
        model.load_params(params)
        _, objective = model(torch.from_numpy(inputs.astype(np.int64)),
                             torch.from_numpy(targets.astype(np.int64)))
        objective.backward()
    finally:
        gpt.Z_LOSS_FORM = old
    return model


def _rows(model, tensors, grads):
    rows = [("loss", [1], tensors["loss"].reshape(1), model.last_ce.numpy().reshape(1))]
    if "aux_loss" in tensors:
        rows.append(("aux_loss", [1], tensors["aux_loss"].reshape(1),
                     model.last_aux.numpy().reshape(1)))
    rows += [("grad." + n, list(p.shape), grads[n], model.grad(n).numpy())
             for n, p in model.p.items()]
    return rows


def compare_dump(path, ref_dtype="dump", out=sys.stdout, z_form=None):
    """Run all checks on one dump; print a report to out; return True when everything passes."""
    def say(msg=""):
        print(msg, file=out)

    z_form = z_form or gpt.Z_LOSS_FORM
    problems = []
    try:
        tensors, meta = st.read(path)
        cfg = gpt.config_from_metadata(meta)
    except (OSError, ValueError) as e:
        say(f"FAIL: cannot use {path}: {e}")
        return False
    dtype = meta.get("dtype")
    if dtype not in TOLERANCE:
        say(f"FAIL: metadata dtype {dtype!r} must be one of {sorted(TOLERANCE)}")
        return False
    tol = TOLERANCE[dtype]
    compute_dtype = TORCH_DTYPE["float64" if ref_dtype == "float64" else dtype]

    model = gpt.GPT(cfg, dtype=compute_dtype)
    expected = set(model.param_names)
    state = set(model.state)  # the expert biases: inputs of the dump, without gradients

    # Name checks: params, grads and the batch must be exactly what the model implies.
    required = REQUIRED + (("aux_loss",) if cfg["arch"] != "dense" else ())
    for name in required:
        if name not in tensors:
            problems.append(f"missing tensor {name!r}")
    params = {k: v for k, v in tensors.items() if not k.startswith("grad.") and k not in RESERVED}
    grads = {k[len("grad."):]: v for k, v in tensors.items() if k.startswith("grad.")}
    for kind, have, want in (("parameter", params, expected | state), ("gradient", grads, expected)):
        prefix = "grad." if kind == "gradient" else ""
        for n in sorted(want - set(have)):
            problems.append(f"missing {kind} {prefix}{n}")
        for n in sorted(set(have) - want):
            problems.append(f"unexpected {kind} {prefix}{n} (not a parameter of {cfg['arch']})")
    for n, v in [(k, v) for k, v in params.items() if k not in state] + [("grad." + k, v) for k, v in grads.items()]:
        base = n[len("grad."):] if n.startswith("grad.") else n
        if base in model.p and tuple(v.shape) != tuple(model.p[base].shape):
            problems.append(f"{n}: shape {tuple(v.shape)}, expected {tuple(model.p[base].shape)}")
        if v.dtype != np.dtype(dtype):
            problems.append(f"{n}: stored as {v.dtype}, but the dump's dtype is {dtype}")
    if problems or any(r not in tensors for r in required):
        for p in problems:
            say(f"FAIL: {p}")
        return False

    inputs, targets = tensors["inputs"], tensors["targets"]
    V, T_max = cfg["vocab_size"], cfg["seq_len"]
    for n, a in (("inputs", inputs), ("targets", targets)):
        if a.ndim != 2 or a.shape != inputs.shape or a.dtype.kind not in "iu":
            problems.append(f"{n}: want an integer [B, T] tensor, got {a.dtype} {list(a.shape)}")
        elif a.size and (a.min() < 0 or a.max() >= V):
            problems.append(f"{n}: token ids outside [0, {V})")
    if inputs.ndim == 2 and inputs.shape[1] > T_max:
        problems.append(f"inputs: T = {inputs.shape[1]} exceeds seq_len {T_max}")
    for n in ("loss", "aux_loss"):
        if n in tensors and tensors[n].size != 1:
            problems.append(f"{n}: want one value, got shape {list(tensors[n].shape)}")
    if problems:
        for p in problems:
            say(f"FAIL: {p}")
        return False

    model = reference(cfg, params, inputs, targets, compute_dtype, z_form)

    say(f"dump {path}: arch={cfg['arch']} norm={cfg['norm']} L={cfg['n_layer']} "
        f"C={cfg['d_model']} H={cfg['n_head']} F={cfg['d_ff']} V={V} seq_len={T_max} "
        f"batch={list(inputs.shape)} dtype={dtype} reference in {str(compute_dtype)[6:]}, "
        f"tolerance {tol:g}")
    if cfg["arch"] != "dense":
        moe_desc = (f"moe: E={cfg['num_experts']} top_k={cfg['top_k']} every={cfg['every']} "
                    f"capacity_factor={cfg['capacity_factor']:g} "
                    f"renormalize={int(cfg['renormalize'])} aux_loss_coef={cfg['aux_loss_coef']:g} "
                    f"z_loss_coef={cfg['z_loss_coef']:g} (z-loss form {z_form})")
        if cfg["arch"] == "scmoe":
            moe_desc += f" position={cfg['position']} combine={cfg['combine']}"
        say(moe_desc)
    near_tie = False
    for s in model.moe_stats:
        l, k = s["layer"], cfg["top_k"]
        counts = [int(c) for c in s["counts"].tolist()]
        admitted = [int(c) for c in s["admitted"].tolist()]
        margin = s["margin"]
        margin_txt = "n/a (k = E)" if margin is None else f"{margin.item():.3e}"
        # The dump's own dtype decides how close a tie its routing could have resolved either way.
        if margin is not None and margin.item() < NEAR_TIE[TORCH_DTYPE[dtype]]:
            near_tie = True
            margin_txt += " (NEAR-TIE: the expert choice may legitimately differ)"
        say(f"  MoE layer blocks.{l}: input {_tap_desc(cfg, l)}; {s['tokens']} tokens x k={k}, "
            f"capacity {s['cap']} per expert; load before capacity {counts}, admitted {admitted}; "
            f"dropped {int(s['dropped'])} of {s['tokens'] * k} assignments; "
            f"aux {s['aux'].item():.6g} z {s['z'].item():.6g}; min top-k margin {margin_txt}")
    rows = _rows(model, tensors, grads)
    width = max(len(r[0]) for r in rows)
    say(f"{'tensor':<{width}}  {'shape':<14} {'max|ref|':>10} {'max abs err':>11} {'rel err':>10}")
    ok = True
    for name, shape, got, ref in rows:
        abs_err, scale, rel = rel_error(got, ref)
        passed = rel <= tol
        ok &= passed
        say(f"{name:<{width}}  {str(shape):<14} {scale:10.3e} {abs_err:11.3e} {rel:10.3e}"
            f"  {'ok' if passed else 'FAIL'}")
    if ok:
        say("PASS")
        return True
    say("FAIL: some tensors exceed the tolerance")
    if near_tie:
        say("note: a routing near-tie was reported above; compare with --ref-dtype float64 or "
            "use another seed")
    if cfg["arch"] != "dense" and cfg["z_loss_coef"] != 0:
        # The spec's z-loss formula is ambiguous; say whether the other reading explains it.
        for other in gpt.Z_LOSS_FORMS:
            if other == z_form:
                continue
            alt = reference(cfg, params, inputs, targets, compute_dtype, other)
            if all(rel_error(g, r)[2] <= tol for _, _, g, r in _rows(alt, tensors, grads)):
                say(f"note: the dump matches the reference with z-loss form {other!r} "
                    f"(--z-loss {other}); the two implementations read the z-loss differently")
    return False


# ---------------------------------------------------------------------------------------------
# Self-test: exercises the dump format and every failure path without the C++ side.

def _numpy_mlp(P, x, prefix):
    hmid = x @ P[prefix + ".fc.weight"].T + P[prefix + ".fc.bias"]
    g = 0.5 * hmid * (1 + np.tanh(np.sqrt(2 / np.pi) * (hmid + 0.044715 * hmid ** 3)))
    return g @ P[prefix + ".proj.weight"].T + P[prefix + ".proj.bias"]


def _numpy_moe(cfg, P, x, prefix, z_form=None):
    """Loop-level MoE layer on x [B, T, C] (float64 numpy), straight from the spec.

    Returns (out [B, T, C], aux_loss_coef * aux + z_loss_coef * z, routing, dropped, counts) with
    routing the assignments in admission order as (n, j, expert, admitted).
    """
    z_form = z_form or gpt.Z_LOSS_FORM
    B, T, C = x.shape
    E, k = cfg["num_experts"], cfg["top_k"]
    rows = [x[bi, t] for bi in range(B) for t in range(T)]  # row n = b * T + t
    N = len(rows)
    Wg = P[prefix + ".gate.weight"]
    logits, probs, choice = [], [], []
    for r in rows:
        lg = [float(Wg[e] @ r) for e in range(E)]
        m = max(lg)
        ex = [math.exp(v - m) for v in lg]
        pr = [v / sum(ex) for v in ex]
        top = sorted(range(E), key=lambda e: (-pr[e], e))[:k]
        g = [pr[e] for e in top]
        if cfg["renormalize"] and k > 1:
            g = [v / sum(g) for v in g]
        logits.append(lg)
        probs.append(pr)
        choice.append(list(zip(top, g)))
    cf = cfg["capacity_factor"]
    cap = min(k * math.ceil(cf * N / E), N) if cf > 0 else N * k
    load, out, routing, dropped = [0] * E, [np.zeros(C) for _ in range(N)], [], 0
    for j in range(k):
        for n in range(N):
            e, g = choice[n][j]
            ok = load[e] < cap
            routing.append((n, j, e, ok))
            if ok:
                load[e] += 1
                out[n] = out[n] + g * _numpy_mlp(P, rows[n], f"{prefix}.experts.{e}")
            else:
                dropped += 1
    counts = [sum(1 for n in range(N) for e2, _ in choice[n] if e2 == e) for e in range(E)]
    aux = E * sum(sum(probs[n][e] for n in range(N)) / N * counts[e] / (N * k) for e in range(E))
    lse = [max(lg) + math.log(sum(math.exp(v - max(lg)) for v in lg)) for lg in logits]
    if z_form == "square_of_mean":
        z = (sum(lse) / N) ** 2
    else:
        z = sum(v * v for v in lse) / N
    weighted = cfg["aux_loss_coef"] * aux + cfg["z_loss_coef"] * z
    return np.array(out).reshape(B, T, C), weighted, routing, dropped, counts


def _numpy_forward(cfg, params, inputs, targets, z_form=None):
    """A loop-level float64 forward written straight from the spec, as a check on gpt.py itself.

    Shares nothing with gpt.py but the parsed config. Returns a dict: ce (mean cross-entropy),
    aux (summed weighted aux + z losses), obj (ce + aux), and per MoE layer l: routing[l] (for
    each assignment in admission order: (n, j, expert, admitted)), dropped[l], counts[l].
    """
    z_form = z_form or gpt.Z_LOSS_FORM
    P = {k: np.asarray(v.detach().numpy() if hasattr(v, "detach") else v, dtype=np.float64)
         for k, v in params.items()}
    C, H = cfg["d_model"], cfg["n_head"]
    hd = C // H
    B, T = inputs.shape
    arch = cfg["arch"]

    def norm(x, prefix):
        if cfg["norm"] == "layernorm":
            mu = x.mean(-1, keepdims=True)
            var = ((x - mu) ** 2).mean(-1, keepdims=True)
            return (x - mu) / np.sqrt(var + 1e-5) * P[prefix + ".weight"] + P[prefix + ".bias"]
        return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-5) * P[prefix + ".weight"]

    def lin(x, prefix):
        return x @ P[prefix + ".weight"].T + P[prefix + ".bias"]

    def mlp(x, prefix):
        hmid = lin(x, prefix + ".fc")
        g = 0.5 * hmid * (1 + np.tanh(np.sqrt(2 / np.pi) * (hmid + 0.044715 * hmid ** 3)))
        return lin(g, prefix + ".proj")

    def attn(x, b):
        qkv = lin(x, b + ".attn.qkv")
        q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
        y = np.zeros_like(q)
        for bi in range(B):
            for h in range(H):
                s = slice(h * hd, (h + 1) * hd)
                for t in range(T):
                    scores = np.array([q[bi, t, s] @ k[bi, u, s] for u in range(t + 1)])
                    w = np.exp(scores / np.sqrt(hd) - (scores / np.sqrt(hd)).max())
                    w /= w.sum()
                    y[bi, t, s] = sum(w[u] * v[bi, u, s] for u in range(t + 1))
        return lin(y, b + ".attn.proj")

    res = {"routing": {}, "dropped": {}, "counts": {}}
    aux_total = [0.0]

    def moe(x, prefix, l):
        out, weighted, routing, dropped, counts = _numpy_moe(cfg, P, x, prefix, z_form)
        aux_total[0] += weighted
        res["routing"][l], res["dropped"][l], res["counts"][l] = routing, dropped, counts
        return out

    x = P["wte"][inputs] + P["wpe"][:T]
    hs, us = [], []
    for l in range(cfg["n_layer"]):
        b = f"blocks.{l}"
        h = x
        a = h + attn(norm(h, b + ".ln1"), b)
        u = norm(a, b + ".ln2")
        hs.append(h)
        us.append(u)
        if arch == "dense" or (l + 1) % cfg["every"] != 0:
            x = a + mlp(u, b + ".mlp")
        elif arch == "moe":
            x = a + moe(u, b + ".moe", l)
        elif arch == "shared_expert":
            x = a + mlp(u, b + ".shared_expert") + moe(u, b + ".moe", l)
        else:
            pos = cfg["position"]
            tap = (norm(h, b + ".moe.norm") if pos == 1 else us[l - 1] if pos == 2
                   else norm(hs[l - 1], b + ".moe.norm"))
            se = mlp(u, b + ".shared_expert")
            routed = moe(tap, b + ".moe", l)
            if cfg["combine"] == "add":
                x = a + se + routed
            elif cfg["combine"] == "cg1":
                coef = 1 / (1 + np.exp(-(u @ P[b + ".combine.weight"][0])))
                x = a + coef[..., None] * se + routed
            else:
                lg = u @ P[b + ".combine.weight"].T
                w = np.exp(lg - lg.max(-1, keepdims=True))
                w /= w.sum(-1, keepdims=True)
                x = a + w[..., 0:1] * se + w[..., 1:2] * routed
    logits = norm(x, "ln_f") @ P["wte"].T
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    res["ce"] = float(-np.mean(np.take_along_axis(logp, targets[..., None], -1)))
    res["aux"] = aux_total[0]
    res["obj"] = res["ce"] + res["aux"]
    return res


def _fd_check(cfg, model, inputs, targets, z_form=None):
    """Central differences of the numpy objective along each parameter's gradient direction.

    For d = g / |g|, (f(w + eps d) - f(w - eps d)) / (2 eps) equals |g| only if g is the true
    gradient (Cauchy-Schwarz), so one pair of evaluations checks a whole tensor's gradient.
    Routing is piecewise constant, so both evaluations must route identically (eps shrinks
    until they do). Returns (worst error, its tensor name); error relative to max(|g|, 1e-3).
    """
    P = {n: p.detach().numpy().astype(np.float64) for n, p in model.p.items()}
    rng = np.random.default_rng(0)
    worst, worst_name = 0.0, None
    for name, p in model.p.items():
        g = model.grad(name).numpy().astype(np.float64)
        gn = float(np.linalg.norm(g))
        d = g / gn if gn > 0 else rng.standard_normal(g.shape) / math.sqrt(g.size)
        for eps in (1e-5, 1e-6, 1e-7):
            fs = []
            for sign in (1, -1):
                Q = dict(P)
                Q[name] = P[name] + sign * eps * d
                fs.append(_numpy_forward(cfg, Q, inputs, targets, z_form))
            if fs[0]["routing"] == fs[1]["routing"]:
                break
        else:
            return float("inf"), name + " (routing flips under any step)"
        fd = (fs[0]["obj"] - fs[1]["obj"]) / (2 * eps)
        err = abs(fd - gn) / max(gn, 1e-3)
        if err > worst:
            worst, worst_name = err, name
    return worst, worst_name


def _moe_meta(cfg):
    return {"num_experts": str(cfg["num_experts"]), "top_k": str(cfg["top_k"]),
            "every": str(cfg["every"]), "capacity_factor": repr(float(cfg["capacity_factor"])),
            "aux_loss_coef": repr(float(cfg["aux_loss_coef"])),
            "z_loss_coef": repr(float(cfg["z_loss_coef"])),
            "renormalize": "1" if cfg["renormalize"] else "0", "position": str(cfg["position"]),
            "combine": cfg["combine"], "gate_noise": "0"}


def _make_dump(path, cfg, B, T, seed, dtype="float64", mutate=None, tweak=None, z_form=None,
               moe_meta=None):
    """Write a dump computed by gpt.py in float64 (stored as dtype); mutate(tensors) may corrupt it.

    tweak(params) may edit the random parameters (N(0, 0.5^2), 1-D weights + 1) first; z_form
    picks gpt.py's z-loss form; moe_meta (default: for MoE archs only) adds the MoE metadata keys
    and the aux_loss tensor.
    """
    torch.manual_seed(seed)
    model = gpt.GPT(cfg, dtype=torch.float64)
    # Non-trivial norms and biases (not 1/0) and a larger scale, so every gradient is exercised.
    with torch.no_grad():
        for p in model.p.values():
            p.copy_(torch.randn_like(p) * 0.5)
        for n, p in model.p.items():
            if n.endswith(".weight") and p.dim() == 1:
                p.add_(1.0)
        if cfg["arch"] != "dense":
            # Norm biases are common to all tokens and would send most tokens to one expert:
            # shrink them and sharpen the gate, for varied routing with clear top-k margins.
            for n, p in model.p.items():
                if n.endswith(".gate.weight"):
                    p.mul_(3.0)
                if n.endswith(".bias") and (".ln" in n or n.startswith("ln") or ".norm." in n):
                    p.mul_(0.2)
        if tweak:
            tweak(model.p)
    inputs = torch.randint(0, cfg["vocab_size"], (B, T), dtype=torch.int32)
    targets = torch.randint(0, cfg["vocab_size"], (B, T), dtype=torch.int32)
    old = gpt.Z_LOSS_FORM
    gpt.Z_LOSS_FORM = z_form or old
    try:
        _, loss = model(inputs, targets)
    finally:
        gpt.Z_LOSS_FORM = old
    loss.backward()
    np_dtype = np.dtype(dtype)
    tensors = {n: p.detach().numpy().astype(np_dtype) for n, p in model.p.items()}
    tensors["inputs"] = inputs.numpy()
    tensors["targets"] = targets.numpy()
    tensors["loss"] = np.array([model.last_ce.item()], dtype=np.float64)
    if moe_meta is None:
        moe_meta = cfg["arch"] != "dense"
    if moe_meta:
        tensors["aux_loss"] = np.array([model.last_aux.item()], dtype=np.float64)
    for n, p in model.p.items():
        tensors["grad." + n] = model.grad(n).numpy().astype(np_dtype)
    meta = {k: str(cfg[k]) for k in gpt._INT_KEYS + ("norm", "arch")}
    meta["dtype"] = dtype
    if moe_meta:
        meta.update(_moe_meta(cfg))
    if mutate:
        mutate(tensors, meta)
    st.write(path, tensors, meta)
    return model, inputs.numpy(), targets.numpy(), loss.item()


# MoE self-test cases: (description, config overrides). Base: L=2, C=8, H=2, F=12, V=11,
# B=2, T=5 (N = 10 tokens), E=4, layernorm, aux 0.01, z 0.01.
MOE_CASES = [
    ("moe top-2 every 2, L=4 (blocks 1, 3), dropless",
     dict(arch="moe", top_k=2, every=2, n_layer=4, capacity_factor=0.0)),
    ("moe top-2, renormalize 0, cf 1.0", dict(arch="moe", top_k=2, renormalize=False,
                                               capacity_factor=1.0)),
    ("shared_expert top-1, cf 2.0", dict(arch="shared_expert", top_k=1)),
    ("shared_expert top-1, rmsnorm", dict(arch="shared_expert", top_k=1, norm="rmsnorm")),
] + [
    (f"scmoe position {pos} combine {comb}", dict(arch="scmoe", position=pos, combine=comb))
    for pos in (1, 2, 3) for comb in ("add", "cg1", "cg2")
] + [
    ("scmoe position 2 cg1, L=4 (blocks 1, 3)", dict(arch="scmoe", n_layer=4)),
    ("scmoe MoE in every block (every 1, position 1)",
     dict(arch="scmoe", every=1, position=1, n_layer=3)),
    ("scmoe position 3 cg2, rmsnorm", dict(arch="scmoe", position=3, combine="cg2",
                                           norm="rmsnorm")),
    ("scmoe position 1 cg1, rmsnorm", dict(arch="scmoe", position=1, norm="rmsnorm")),
    ("ScMoE-2: scmoe top-2 + SE, position 2 cg1", dict(arch="scmoe", top_k=2)),
    ("capacity drops: moe top-2, cf 0.5", dict(arch="moe", top_k=2, capacity_factor=0.5)),
    ("capacity drops: scmoe top-1, cf 0.5", dict(arch="scmoe", capacity_factor=0.5)),
    ("dropless: scmoe top-1, cf 0", dict(arch="scmoe", capacity_factor=0.0)),
    ("z-loss only (aux coef 0), moe top-2", dict(arch="moe", top_k=2, aux_loss_coef=0.0,
                                                z_loss_coef=0.1)),
]


def _moe_cfg(**over):
    base = dict(n_layer=2, d_model=8, n_head=2, d_ff=12, seq_len=6, vocab_size=11,
                norm="layernorm", num_experts=4, every=2, capacity_factor=2.0,
                aux_loss_coef=0.01, z_loss_coef=0.01)
    base.update(over)
    return gpt.make_config(**base)


def _zero_gate(params):
    for n, p in params.items():
        if n.endswith(".moe.gate.weight"):
            p.zero_()


def self_test():
    import io

    results = []

    def check(name, cond):
        results.append((name, bool(cond)))
        print(f"  [{'ok' if cond else 'FAIL'}] {name}")

    def quiet_compare(path, **kw):
        buf = io.StringIO()
        ok = compare_dump(path, out=buf, **kw)
        return ok, buf.getvalue()

    def bump(name, rel):
        def mutate(t, meta):
            a = t[name]
            i = np.unravel_index(np.argmax(np.abs(a)), a.shape)
            a[i] += rel * np.abs(a).max()
        return mutate

    with tempfile.TemporaryDirectory() as tmp:
        # st.py round trip, including dtypes the dumps do not use yet.
        rt = os.path.join(tmp, "rt.safetensors")
        data = {"a": np.arange(6, dtype=np.float64).reshape(2, 3), "b": np.array([1, -2], np.int32),
                "c": np.zeros((0, 4), np.float32), "d": np.array([1.5, -3.0], np.float32)}
        st.write(rt, data, {"k": "v"}, bf16=("d",))
        back, meta = st.read(rt)
        check("safetensors round trip (F64, I32, empty F32, BF16, metadata)",
              meta == {"k": "v"} and all(np.array_equal(back[k], data[k]) for k in data)
              and back["a"].dtype == np.float64 and back["b"].dtype == np.int32)

        for norm in ("layernorm", "rmsnorm"):
            print(f"norm = {norm}")
            cfg = gpt.make_config(n_layer=2, d_model=8, n_head=2, d_ff=12, seq_len=6,
                                  vocab_size=11, norm=norm)
            good = os.path.join(tmp, f"good_{norm}.safetensors")
            model, inputs, targets, loss = _make_dump(good, cfg, B=2, T=5, seed=1)
            ok, report = quiet_compare(good)
            check("matching float64 dump passes", ok)
            if norm == "layernorm":
                print("\n".join("    " + line for line in report.splitlines()))
            ref = _numpy_forward(cfg, model.p, inputs, targets)["ce"]
            check(f"gpt.py loss matches a loop-level numpy forward (|diff| {abs(ref - loss):.1e})",
                  abs(ref - loss) <= 1e-12 * max(1.0, abs(ref)))

            f32 = os.path.join(tmp, f"f32_{norm}.safetensors")
            _make_dump(f32, cfg, B=2, T=5, seed=1, dtype="float32")
            check("float32 dump passes at float32 tolerance", quiet_compare(f32)[0])
            check("float32 dump passes against a float64 reference",
                  quiet_compare(f32, ref_dtype="float64")[0])

            bad_cases = {
                "one gradient element off by 1e-6 relative": bump("grad.blocks.1.attn.qkv.weight", 1e-6),
                "norm weight gradient off by 1e-6 relative": bump("grad.blocks.0.ln2.weight", 1e-6),
                "loss off by 1e-7 relative": bump("loss", 1e-7),
                "a missing gradient": lambda t, m: t.pop("grad.wpe"),
                "an extra gradient": lambda t, m: t.__setitem__("grad.bogus", np.zeros(3)),
                "gradients of two tensors swapped": lambda t, m: t.update(
                    {"grad.blocks.0.mlp.fc.bias": t["grad.blocks.1.mlp.fc.bias"].copy(),
                     "grad.blocks.1.mlp.fc.bias": t["grad.blocks.0.mlp.fc.bias"].copy()}),
                "a NaN in a gradient": lambda t, m: t["grad.ln_f.weight"].__setitem__(0, np.nan),
                "a gradient with the wrong shape": lambda t, m: t.__setitem__(
                    "grad.wte", t["grad.wte"][:-1].copy()),
                "a wrong norm in metadata": lambda t, m: m.__setitem__(
                    "norm", "rmsnorm" if norm == "layernorm" else "layernorm"),
            }
            for desc, mutate in bad_cases.items():
                bad = os.path.join(tmp, "bad.safetensors")
                _make_dump(bad, cfg, B=2, T=5, seed=1, mutate=mutate)
                check(f"fails on {desc}", not quiet_compare(bad)[0])

        # End to end through the command line, for the exit codes ctest will see.
        script = os.path.abspath(__file__)
        rc_good = subprocess.run([sys.executable, script, good], capture_output=True).returncode
        _make_dump(os.path.join(tmp, "bad.safetensors"), cfg, B=2, T=5, seed=1,
                   mutate=bump("grad.blocks.0.attn.proj.weight", 1e-6))
        rc_bad = subprocess.run([sys.executable, script, os.path.join(tmp, "bad.safetensors")],
                                capture_output=True).returncode
        check(f"command line exit codes (good {rc_good}, corrupted {rc_bad})",
              rc_good == 0 and rc_bad == 1)
        trunc = os.path.join(tmp, "trunc.safetensors")
        with open(good, "rb") as f, open(trunc, "wb") as g:
            g.write(f.read()[:-8])
        check("a truncated file is rejected", not quiet_compare(trunc)[0])


        # ---- MoE architectures ------------------------------------------------------------
        print("MoE architectures (each: compare passes; gpt.py's cross-entropy, aux loss and "
              "routing match the numpy loop forward; finite differences of the numpy objective "
              "confirm every gradient)")
        for desc, over in MOE_CASES:
            cfg = _moe_cfg(**over)
            path = os.path.join(tmp, "moe.safetensors")
            model, inputs, targets, _ = _make_dump(path, cfg, B=2, T=5, seed=3)
            ok, report = quiet_compare(path)
            ref = _numpy_forward(cfg, model.p, inputs, targets)
            d_ce = abs(ref["ce"] - model.last_ce.item())
            d_aux = abs(ref["aux"] - model.last_aux.item())
            stats = {s_["layer"]: s_ for s_ in model.moe_stats}
            same_routing = (sorted(stats) == sorted(ref["dropped"]) and all(
                int(stats[l]["dropped"]) == ref["dropped"][l]
                and [int(c) for c in stats[l]["counts"].tolist()] == ref["counts"][l]
                for l in stats))
            fd_err, fd_name = _fd_check(cfg, model, inputs, targets)
            drops = {f"blocks.{l}": ref["dropped"][l] for l in sorted(ref["dropped"])}
            fine = (ok and d_ce <= 1e-12 and d_aux <= 1e-12 * max(1.0, abs(ref["aux"]))
                    and same_routing and fd_err <= 1e-6)
            check(f"{desc}: compare {'passes' if ok else 'FAILS'}, numpy |dCE| {d_ce:.1e} "
                  f"|daux| {d_aux:.1e}, routing {'same' if same_routing else 'DIFFERS'}, "
                  f"FD worst {fd_err:.1e} ({fd_name}); dropped {drops}", fine)
            if "cf 0.5" in desc:
                check("  ... the capacity case really drops assignments in every MoE layer",
                      all(v > 0 for v in ref["dropped"].values()))
            if "dropless" in desc:
                check("  ... the dropless case drops nothing",
                      all(v == 0 for v in ref["dropped"].values()))
            if desc.startswith("capacity drops: scmoe"):
                print("\n".join("    " + line for line in report.splitlines()
                                if "grad.blocks.0" not in line))

        # The MoE layer alone against the numpy loop version (output elementwise, then loss).
        for desc, over in (("moe top-2, cf 0.5 (drops)", dict(arch="moe", top_k=2,
                                                               capacity_factor=0.5)),
                           ("scmoe top-1, renorm, cf 2", dict(arch="scmoe")),
                           ("moe top-3 of 4, no renormalize, cf 0", dict(
                               arch="moe", top_k=3, renormalize=False, capacity_factor=0.0))):
            cfg = _moe_cfg(**over)
            m = gpt.GPT(cfg)
            gen = torch.Generator().manual_seed(5)
            with torch.no_grad():
                for p in m.p.values():
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
            x = torch.randn(3, 7, cfg["d_model"], generator=gen, dtype=torch.float64)
            ctx = {"aux": [], "stats": [], "h": {}, "u": {}, "state": m.state}
            y = gpt.moe(m.p, "blocks.1.moe", x, cfg, ctx, 1)
            P = {n: p.detach().numpy() for n, p in m.p.items()}
            y_np, weighted, _, dropped, _ = _numpy_moe(cfg, P, x.numpy(), "blocks.1.moe")
            err = float(np.abs(y.detach().numpy() - y_np).max())
            d_aux = abs(ctx["aux"][0].item() - weighted)
            check(f"MoE layer output vs numpy loop, {desc}: max|diff| {err:.1e}, aux+z diff "
                  f"{d_aux:.1e}, dropped {int(ctx['stats'][0]['dropped'])} (numpy {dropped})",
                  err <= 1e-13 and d_aux <= 1e-14 and int(ctx["stats"][0]["dropped"]) == dropped)

        # Exact ties (zero gate weights: every probability is 1/E) go to the lower expert index.
        for over, want_counts, want_dropped in (
                (dict(arch="moe", top_k=2, capacity_factor=0.0), [10, 10, 0, 0], 0),
                (dict(arch="moe", top_k=2, capacity_factor=0.5), [10, 10, 0, 0], 12),
                (dict(arch="scmoe", capacity_factor=2.0), [10, 0, 0, 0], 5)):
            cfg = _moe_cfg(**over)
            path = os.path.join(tmp, "tie.safetensors")
            model, inputs, targets, _ = _make_dump(path, cfg, B=2, T=5, seed=4, tweak=_zero_gate)
            ref = _numpy_forward(cfg, model.p, inputs, targets)
            s1 = model.moe_stats[0]
            counts = [int(c) for c in s1["counts"].tolist()]
            check(f"ties to the lower expert index ({cfg['arch']} k={cfg['top_k']} "
                  f"cf {cfg['capacity_factor']}): counts {counts}, dropped {int(s1['dropped'])}"
                  f"; numpy agrees; compare passes",
                  counts == want_counts == ref["counts"][1] and int(s1["dropped"]) == want_dropped
                  == ref["dropped"][1] and abs(ref["obj"] - (model.last_ce + model.last_aux).item())
                  <= 1e-12 and quiet_compare(path)[0])

        # float32 MoE dumps.
        for desc, over in (("scmoe position 2 cg1", dict(arch="scmoe")),
                           ("moe top-2 cf 0.5", dict(arch="moe", top_k=2, capacity_factor=0.5))):
            cfg = _moe_cfg(**over)
            f32 = os.path.join(tmp, "moe_f32.safetensors")
            _make_dump(f32, cfg, B=2, T=5, seed=3, dtype="float32")
            check(f"float32 {desc} dump passes (float32 and float64 references)",
                  quiet_compare(f32)[0] and quiet_compare(f32, ref_dtype="float64")[0])

        # Dense dumps may carry the MoE keys and an aux_loss, which must then be 0.
        cfg = _moe_cfg(arch="dense")
        dense_aux = os.path.join(tmp, "dense_aux.safetensors")
        _make_dump(dense_aux, cfg, B=2, T=5, seed=1, moe_meta=True)
        check("a dense dump with MoE metadata keys and aux_loss 0 passes",
              quiet_compare(dense_aux)[0])
        _make_dump(dense_aux, cfg, B=2, T=5, seed=1, moe_meta=True,
                   mutate=lambda t, m: t.__setitem__("aux_loss", np.array([1e-3])))
        check("fails on a dense dump with a nonzero aux_loss", not quiet_compare(dense_aux)[0])

        # Corruptions of MoE dumps must fail.
        def setmeta(key, value):
            return lambda t, m: m.__setitem__(key, value)

        def swap_used_experts(t, m):
            used = [e for e in range(4)
                    if np.any(t[f"grad.blocks.1.moe.experts.{e}.fc.weight"] != 0)]
            a_, b_ = (f"grad.blocks.1.moe.experts.{e}.fc.weight" for e in used[:2])
            t.update({a_: t[b_].copy(), b_: t[a_].copy()})

        moe_bad = {
            (("scmoe", 2, 0.5), "aux_loss missing"): lambda t, m: t.pop("aux_loss"),
            (("scmoe", 2, 0.5), "aux_loss off by 1e-6 relative"): bump("aux_loss", 1e-6),
            (("scmoe", 2, 0.5), "gate weight gradient off by 1e-6 relative"):
                bump("grad.blocks.1.moe.gate.weight", 1e-6),
            (("scmoe", 2, 0.5), "combine weight gradient off by 1e-6 relative"):
                bump("grad.blocks.1.combine.weight", 1e-6),
            (("scmoe", 2, 0.5), "the tapped block's ln2 gradient off by 1e-6 relative"):
                bump("grad.blocks.0.ln2.weight", 1e-6),
            (("scmoe", 2, 0.5), "an expert gradient missing"):
                lambda t, m: t.pop("grad.blocks.1.moe.experts.2.fc.weight"),
            (("scmoe", 2, 0.5), "an expert too many"): lambda t, m: m.__setitem__(
                "num_experts", "5"),
            (("moe", 2, 2.0), "two used experts' gradients swapped"): swap_used_experts,
            (("scmoe", 2, 0.5), "capacity_factor 0 (dropless) in metadata"):
                setmeta("capacity_factor", "0"),
            (("scmoe", 2, 0.5), "position 1 in metadata (needs moe.norm)"):
                setmeta("position", "1"),
            (("scmoe", 2, 0.5), "combine cg2 in metadata"): setmeta("combine", "cg2"),
            (("scmoe", 2, 0.5), "gate_noise 1 in metadata"): setmeta("gate_noise", "1"),
            (("scmoe", 2, 0.5), "metadata without num_experts"):
                lambda t, m: m.pop("num_experts"),
            (("scmoe", 2, 0.5), "aux_loss_coef 0.02 in metadata"):
                setmeta("aux_loss_coef", "0.02"),
            (("scmoe", 1, 2.0), "position 3 instead of 1 in metadata"): setmeta("position", "3"),
            (("moe", 2, 2.0), "top_k 1 in metadata"): setmeta("top_k", "1"),
            (("moe", 2, 2.0), "renormalize 0 in metadata"): setmeta("renormalize", "0"),
            (("moe", 2, 2.0), "every 1 in metadata"): setmeta("every", "1"),
            (("moe", 2, 2.0), "arch shared_expert in metadata"): setmeta("arch", "shared_expert"),
            (("moe", 2, 2.0), "z_loss_coef 0 in metadata"): setmeta("z_loss_coef", "0"),
        }
        for ((arch, pos_or_k, cf), desc), mutate in moe_bad.items():
            over = dict(arch=arch, capacity_factor=cf)
            over.update(dict(top_k=pos_or_k) if arch == "moe" else dict(position=pos_or_k))
            bad = os.path.join(tmp, "bad_moe.safetensors")
            _make_dump(bad, _moe_cfg(**over), B=2, T=5, seed=3, mutate=mutate)
            check(f"fails on {arch}: {desc}", not quiet_compare(bad)[0])

        try:
            _moe_cfg(arch="scmoe", every=1, position=2)
            check("scmoe every 1 with position 2 (no block before block 0) is rejected", False)
        except ValueError:
            check("scmoe every 1 with position 2 (no block before block 0) is rejected", True)

        # The z-loss form: a dump using the other reading fails, and the report says so.
        cfg = _moe_cfg(arch="moe", top_k=2, z_loss_coef=0.1)
        zdump = os.path.join(tmp, "zform.safetensors")
        _make_dump(zdump, cfg, B=2, T=5, seed=3, z_form="square_of_mean")
        ok_default, report = quiet_compare(zdump)
        ok_other, _ = quiet_compare(zdump, z_form="square_of_mean")
        check("a dump with the square-of-mean z-loss fails by default (mean of squares), names that "
              "form, and passes with --z-loss square_of_mean",
              not ok_default and "z-loss form 'square_of_mean'" in report and ok_other)

        # Command line on an MoE dump.
        script = os.path.abspath(__file__)
        mpath = os.path.join(tmp, "moe_cli.safetensors")
        _make_dump(mpath, _moe_cfg(arch="scmoe"), B=2, T=5, seed=3)
        rc_good = subprocess.run([sys.executable, script, mpath], capture_output=True).returncode
        _make_dump(mpath, _moe_cfg(arch="scmoe"), B=2, T=5, seed=3,
                   mutate=bump("grad.blocks.1.moe.gate.weight", 1e-6))
        rc_bad = subprocess.run([sys.executable, script, mpath], capture_output=True).returncode
        check(f"command line exit codes on scmoe dumps (good {rc_good}, corrupted {rc_bad})",
              rc_good == 0 and rc_bad == 1)

    failed = [n for n, ok in results if not ok]
    print(f"self-test: {len(results) - len(failed)}/{len(results)} checks passed")
    return not failed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dump", nargs="?", help="safetensors dump written by the C++ reference test")
    ap.add_argument("--self-test", action="store_true", help="check this tool without the C++ side")
    ap.add_argument("--ref-dtype", choices=("dump", "float64"), default="dump",
                    help="compute the reference in the dump's dtype (default) or in float64")
    ap.add_argument("--z-loss", choices=gpt.Z_LOSS_FORMS, default=gpt.Z_LOSS_FORM,
                    help="router z-loss: square of the mean logsumexp (the spec's formula, "
                         "default) or mean of the squares (ST-MoE)")
    args = ap.parse_args(argv)
    if args.self_test == bool(args.dump):
        ap.error("give either a DUMP path or --self-test")
    torch.set_num_threads(1)  # tiny sizes: threads only add nondeterminism and start-up time
    if args.self_test:
        ok = self_test()
    else:
        ok = compare_dump(args.dump, args.ref_dtype, z_form=args.z_loss)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
