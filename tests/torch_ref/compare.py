#!/usr/bin/env python3
"""Compare a C++ dump (params, batch, loss, grads) with the PyTorch reference in gpt.py.

Usage: compare.py DUMP.safetensors [--ref-dtype dump|float64]
       compare.py --self-test
Exit status: 0 all checks pass, 1 any check fails, 77 torch/numpy missing (ctest SKIP_RETURN_CODE).

Error measure per tensor: max|dump - ref| / max(max|ref|, tiny), i.e. relative to the tensor's
scale rather than per element, so that near-zero entries do not dominate.
"""

import argparse
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

TOLERANCE = {"float64": 1e-8, "float32": 2e-4}
TORCH_DTYPE = {"float64": torch.float64, "float32": torch.float32}
TINY = 1e-30
RESERVED = ("inputs", "targets", "loss")


def rel_error(got, ref):
    """(max abs error, max |ref|, relative error); NaN/inf anywhere counts as a failure (inf)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if not (np.all(np.isfinite(got)) and np.all(np.isfinite(ref))):
        return float("inf"), float("nan"), float("inf")
    abs_err = float(np.max(np.abs(got - ref))) if got.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return abs_err, scale, abs_err / max(scale, TINY)


def compare_dump(path, ref_dtype="dump", out=sys.stdout):
    """Run all checks on one dump; print a report to out; return True when everything passes."""
    def say(msg=""):
        print(msg, file=out)

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

    # Name checks: params, grads and the batch must be exactly what the model implies.
    for name in RESERVED:
        if name not in tensors:
            problems.append(f"missing tensor {name!r}")
    params = {k: v for k, v in tensors.items() if not k.startswith("grad.") and k not in RESERVED}
    grads = {k[len("grad."):]: v for k, v in tensors.items() if k.startswith("grad.")}
    for kind, have in (("parameter", params), ("gradient", grads)):
        prefix = "grad." if kind == "gradient" else ""
        for n in sorted(expected - set(have)):
            problems.append(f"missing {kind} {prefix}{n}")
        for n in sorted(set(have) - expected):
            problems.append(f"unexpected {kind} {prefix}{n} (not a parameter of {cfg['arch']})")
    for n, v in list(params.items()) + [("grad." + k, v) for k, v in grads.items()]:
        base = n[len("grad."):] if n.startswith("grad.") else n
        if base in model.p and tuple(v.shape) != tuple(model.p[base].shape):
            problems.append(f"{n}: shape {tuple(v.shape)}, expected {tuple(model.p[base].shape)}")
        if v.dtype != np.dtype(dtype):
            problems.append(f"{n}: stored as {v.dtype}, but the dump's dtype is {dtype}")
    if problems or any(r not in tensors for r in RESERVED):
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
    if tensors["loss"].size != 1:
        problems.append(f"loss: want one value, got shape {list(tensors['loss'].shape)}")
    if problems:
        for p in problems:
            say(f"FAIL: {p}")
        return False

    model.load_params(params)
    _, loss = model(torch.from_numpy(inputs.astype(np.int64)),
                    torch.from_numpy(targets.astype(np.int64)))
    loss.backward()

    say(f"dump {path}: arch={cfg['arch']} norm={cfg['norm']} L={cfg['n_layer']} "
        f"C={cfg['d_model']} H={cfg['n_head']} F={cfg['d_ff']} V={V} seq_len={T_max} "
        f"batch={list(inputs.shape)} dtype={dtype} reference in {str(compute_dtype)[6:]}, "
        f"tolerance {tol:g}")
    rows = [("loss", [1], tensors["loss"].reshape(1), loss.detach().numpy().reshape(1))]
    rows += [("grad." + n, list(p.shape), grads[n], p.grad.numpy()) for n, p in model.p.items()]
    width = max(len(r[0]) for r in rows)
    say(f"{'tensor':<{width}}  {'shape':<14} {'max|ref|':>10} {'max abs err':>11} {'rel err':>10}")
    ok = True
    for name, shape, got, ref in rows:
        abs_err, scale, rel = rel_error(got, ref)
        passed = rel <= tol
        ok &= passed
        say(f"{name:<{width}}  {str(shape):<14} {scale:10.3e} {abs_err:11.3e} {rel:10.3e}"
            f"  {'ok' if passed else 'FAIL'}")
    say("PASS" if ok else "FAIL: some tensors exceed the tolerance")
    return ok


# ---------------------------------------------------------------------------------------------
# Self-test: exercises the dump format and every failure path without the C++ side.

def _numpy_loss(cfg, params, inputs, targets):
    """A loop-level float64 forward written straight from the spec, as a check on gpt.py itself."""
    P = {k: np.asarray(v.detach().numpy() if hasattr(v, "detach") else v, dtype=np.float64)
         for k, v in params.items()}
    C, H = cfg["d_model"], cfg["n_head"]
    hd = C // H
    B, T = inputs.shape

    def norm(x, prefix):
        if cfg["norm"] == "layernorm":
            mu = x.mean(-1, keepdims=True)
            var = ((x - mu) ** 2).mean(-1, keepdims=True)
            return (x - mu) / np.sqrt(var + 1e-5) * P[prefix + ".weight"] + P[prefix + ".bias"]
        return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-5) * P[prefix + ".weight"]

    def lin(x, prefix):
        return x @ P[prefix + ".weight"].T + P[prefix + ".bias"]

    x = P["wte"][inputs] + P["wpe"][:T]
    for l in range(cfg["n_layer"]):
        b = f"blocks.{l}"
        qkv = lin(norm(x, b + ".ln1"), b + ".attn.qkv")
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
        x = x + lin(y, b + ".attn.proj")
        hmid = lin(norm(x, b + ".ln2"), b + ".mlp.fc")
        g = 0.5 * hmid * (1 + np.tanh(np.sqrt(2 / np.pi) * (hmid + 0.044715 * hmid ** 3)))
        x = x + lin(g, b + ".mlp.proj")
    logits = norm(x, "ln_f") @ P["wte"].T
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    return -np.mean(np.take_along_axis(logp, targets[..., None], -1))


def _make_dump(path, cfg, B, T, seed, dtype="float64", mutate=None):
    """Write a dump computed by gpt.py in float64 (stored as dtype); mutate(tensors) may corrupt it."""
    torch.manual_seed(seed)
    model = gpt.GPT(cfg, dtype=torch.float64)
    # Non-trivial norms and biases (not 1/0) and a larger scale, so every gradient is exercised.
    with torch.no_grad():
        for p in model.p.values():
            p.copy_(torch.randn_like(p) * 0.5)
        for n, p in model.p.items():
            if n.endswith(".weight") and p.dim() == 1:
                p.add_(1.0)
    inputs = torch.randint(0, cfg["vocab_size"], (B, T), dtype=torch.int32)
    targets = torch.randint(0, cfg["vocab_size"], (B, T), dtype=torch.int32)
    _, loss = model(inputs, targets)
    loss.backward()
    np_dtype = np.dtype(dtype)
    tensors = {n: p.detach().numpy().astype(np_dtype) for n, p in model.p.items()}
    tensors["inputs"] = inputs.numpy()
    tensors["targets"] = targets.numpy()
    tensors["loss"] = np.array([loss.item()], dtype=np.float64)
    for n, p in model.p.items():
        tensors["grad." + n] = p.grad.numpy().astype(np_dtype)
    meta = {k: str(cfg[k]) for k in gpt._INT_KEYS + ("norm", "arch")}
    meta["dtype"] = dtype
    if mutate:
        mutate(tensors, meta)
    st.write(path, tensors, meta)
    return model, inputs.numpy(), targets.numpy(), loss.item()


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
            ref = _numpy_loss(cfg, model.p, inputs, targets)
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

    failed = [n for n, ok in results if not ok]
    print(f"self-test: {len(results) - len(failed)}/{len(results)} checks passed")
    return not failed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dump", nargs="?", help="safetensors dump written by the C++ reference test")
    ap.add_argument("--self-test", action="store_true", help="check this tool without the C++ side")
    ap.add_argument("--ref-dtype", choices=("dump", "float64"), default="dump",
                    help="compute the reference in the dump's dtype (default) or in float64")
    args = ap.parse_args(argv)
    if args.self_test == bool(args.dump):
        ap.error("give either a DUMP path or --self-test")
    torch.set_num_threads(1)  # tiny sizes: threads only add nondeterminism and start-up time
    ok = self_test() if args.self_test else compare_dump(args.dump, args.ref_dtype)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
