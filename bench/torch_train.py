#!/usr/bin/env python3
"""CPU training throughput of the GPT in PyTorch (dense or MoE), the baseline for our C++ trainer.

Same model as tests/torch_ref/gpt.py (the reference the C++ gradients are checked against), float32,
random tokens, AdamW + global-norm clipping, so a step does the same work as a `train` step.
--arch moe|shared_expert|scmoe selects the MoE architectures (options as the moe.* / scmoe.* config
keys); the reference MoE loops over experts on one device, so it is a functional baseline only.
--device cuda runs the same on the GPU (bench/gpu.sh): --dtype bfloat16 is autocast to bf16 (fp32
master weights and AdamW state, as `train.precision: bf16`), float32 keeps TF32 off (PyTorch's
default, and what our cuBLASLt GEMMs do); AdamW is torch's fused one on CUDA; --attention sdpa swaps
the reference's explicit softmax attention for F.scaled_dot_product_attention (flash, torch >= 2.0).
Second-last line: `torch median_tokens_per_s <float> median_ms_per_step <float> flops_per_token <int>`.
Last line of output (parsed by scripts): `torch tokens_per_s <float> ms_per_step <float>`.
"""

import argparse
import os
import platform
import statistics
import sys
import time

try:
    import torch
except ImportError:
    print("torch not importable (install python3-torch, or run with /usr/bin/python3)", file=sys.stderr)
    sys.exit(2)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "torch_ref"))
import gpt  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=None, help="default 4 * d_model")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--vocab-size", type=int, default=50304)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--norm", choices=("layernorm", "rmsnorm"), default="layernorm")
    ap.add_argument("--arch", choices=gpt.ARCH_NAMES, default="dense")
    ap.add_argument("--num-experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=None, help="default 2 for moe, else 1")
    ap.add_argument("--every", type=int, default=2, help="an MoE layer every N blocks")
    ap.add_argument("--capacity-factor", type=float, default=2.0, help="<= 0: dropless")
    ap.add_argument("--aux-loss-coef", type=float, default=0.01)
    ap.add_argument("--z-loss-coef", type=float, default=0.0)
    ap.add_argument("--no-renormalize", action="store_true", help="keep raw top-k probabilities")
    ap.add_argument("--position", type=int, choices=(1, 2, 3), default=2, help="scmoe tap")
    ap.add_argument("--combine", choices=gpt.COMBINES, default="cg1", help="scmoe combine")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator, caches)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model when available")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: the first visible GPU (fails clearly without one)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="bfloat16: torch.autocast to bf16 around the forward (fp32 master weights)")
    ap.add_argument("--attention", choices=("reference", "sdpa"), default="reference",
                    help="reference: tests/torch_ref's explicit causal softmax; sdpa: "
                         "F.scaled_dot_product_attention(is_causal=True)")
    args = ap.parse_args(argv)
    if args.d_ff is None:
        args.d_ff = 4 * args.d_model
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    return args


def make_optimizer(model, fused=False):
    # Decay matrices and embeddings only, not norms and biases (the usual GPT recipe); the split
    # hardly changes the cost of a step, which is what this script measures.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    if fused:  # one kernel over all parameters (CUDA, torch >= 2.0), like our adamw_step
        try:
            return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), fused=True)
        except (TypeError, RuntimeError) as e:
            print(f"note: fused AdamW unavailable ({e}); using the default implementation")
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95))


def sdpa_attention(p, prefix, x, n_head):
    """gpt.attention through F.scaled_dot_product_attention: the same function, fused kernels."""
    B, T, C = x.shape
    hd = C // n_head
    q, k, v = gpt.linear(p, prefix + ".qkv", x).split(C, dim=-1)
    q, k, v = (t.view(B, T, n_head, hd).transpose(1, 2) for t in (q, k, v))
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return gpt.linear(p, prefix + ".proj", y.transpose(1, 2).reshape(B, T, C))


def setup_device(args):
    """Checks --device/--dtype/--attention against this torch; returns an error message or None."""
    if args.device == "cuda":
        if not torch.cuda.is_available():
            return (f"--device cuda: torch {torch.__version__} sees no usable CUDA device "
                    f"(torch.cuda.is_available() is False; built with CUDA: "
                    f"{torch.version.cuda or 'no'})")
        # Full fp32 matmuls: PyTorch's default, stated explicitly (our fp32 GEMMs use no TF32 either).
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if args.attention == "sdpa":
        if not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
            return f"--attention sdpa needs torch >= 2.0 (this is {torch.__version__})"
        gpt.attention = sdpa_attention  # block() looks the name up at call time
    if args.dtype == "bfloat16" and args.arch != "dense":
        # The reference MoE index_adds expert outputs into a buffer of its input's dtype, which autocast
        # may leave fp32 while the experts' outputs are bf16 (CPU autocast): accumulate in fp32.
        mlp = gpt.mlp
        gpt.mlp = lambda p, prefix, x: mlp(p, prefix, x).float()
    return None


def main(argv=None):
    args = parse_args(argv)
    err = setup_device(args)
    if err:
        print(err, file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    try:
        cfg = gpt.make_config(n_layer=args.n_layer, d_model=args.d_model, n_head=args.n_head,
                              d_ff=args.d_ff, seq_len=args.seq_len, vocab_size=args.vocab_size,
                              norm=args.norm, arch=args.arch, num_experts=args.num_experts,
                              top_k=args.top_k, every=args.every,
                              capacity_factor=args.capacity_factor,
                              aux_loss_coef=args.aux_loss_coef, z_loss_coef=args.z_loss_coef,
                              renormalize=not args.no_renormalize, position=args.position,
                              combine=args.combine)
    except ValueError as e:
        print(f"bad configuration: {e}", file=sys.stderr)
        return 2
    model = gpt.GPT(cfg, dtype=torch.float32, device=args.device)
    model.init_params(seed=args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    # Active parameters per token: each MoE layer runs top_k of its num_experts experts.
    expert_params = 2 * args.d_model * args.d_ff + args.d_ff + args.d_model
    n_moe = len(gpt.moe_layers(cfg))
    n_active = n_params - n_moe * (cfg["num_experts"] - cfg["top_k"]) * expert_params
    opt = make_optimizer(model, fused=args.device == "cuda")

    step_fn_model = model
    compile_note = "eager"
    if args.compile:
        if hasattr(torch, "compile"):
            step_fn_model = torch.compile(model)
            compile_note = "torch.compile"
        else:
            compile_note = f"eager (torch.compile unavailable in torch {torch.__version__})"
            print(f"note: --compile ignored: torch {torch.__version__} has no torch.compile")

    B, T, V = args.batch_size, args.seq_len, args.vocab_size
    gen = torch.Generator().manual_seed(args.seed)
    # Batches are drawn up front so that the timed loop is only the training step.
    n_batches = min(args.warmup + args.steps, 16)
    batches = [(torch.randint(0, V, (B, T), generator=gen).to(args.device),
                torch.randint(0, V, (B, T), generator=gen).to(args.device))
               for _ in range(n_batches)]
    cuda = args.device == "cuda"
    bf16 = args.dtype == "bfloat16"

    def step(i):
        x, y = batches[i % n_batches]
        if bf16:
            with torch.autocast(device_type=args.device, dtype=torch.bfloat16):
                _, loss = step_fn_model(x, y)
        else:
            _, loss = step_fn_model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()  # .item() also makes sure the step has really finished

    first_loss = None
    times = []
    try:
        for i in range(args.warmup):
            loss = step(i)
            first_loss = loss if first_loss is None else first_loss
        for i in range(args.warmup, args.warmup + args.steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = step(i)
            times.append(time.perf_counter() - t0)
            first_loss = loss if first_loss is None else first_loss
    except Exception as e:  # noqa: BLE001 - on the GPU: out of memory, a compiler failure, ...
        if not cuda:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"torch failed on cuda ({compile_note}, {args.dtype}, batch {B}): "
              f"{type(e).__name__}: {msg[:300]}", file=sys.stderr)
        return 3

    total = sum(times)
    ms_per_step = 1000.0 * total / len(times)
    tokens_per_s = B * T * len(times) / total
    # 6 * active params * tokens for the matmuls plus attention's 12 * L * T * C per token
    # (fwd + bwd); dropped assignments are ignored.
    flops_per_token = 6 * n_active + 12 * args.n_layer * T * args.d_model
    if cuda:
        print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name()}, "
              f"{compile_note}, {args.dtype}{' autocast' if bf16 else ' (no TF32)'}, "
              f"attention {args.attention}, peak memory "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    else:
        print(f"torch {torch.__version__} on {platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads, {compile_note}"
              + (f", {args.dtype} autocast" if bf16 else "")
              + (f", attention {args.attention}" if args.attention != "reference" else ""))
    arch_desc = args.arch
    if args.arch != "dense":
        arch_desc += (f" (E={cfg['num_experts']} top_k={cfg['top_k']} every={cfg['every']} "
                      f"cf={cfg['capacity_factor']:g}")
        if args.arch == "scmoe":
            arch_desc += f" position={cfg['position']} combine={cfg['combine']}"
        arch_desc += f"; {n_active / 1e6:.2f} M active)"
    print(f"model: {arch_desc} L={args.n_layer} C={args.d_model} H={args.n_head} F={args.d_ff} "
          f"T={T} V={V} norm={args.norm}, {n_params / 1e6:.2f} M params, "
          f"{'float32 weights, bf16 autocast' if bf16 else 'float32'}")
    print(f"batch {B} x {T} = {B * T} tokens/step, {args.warmup} warm-up + {args.steps} timed steps")
    print(f"step ms: mean {ms_per_step:.2f}  median {1000 * statistics.median(times):.2f}  "
          f"min {1000 * min(times):.2f}  max {1000 * max(times):.2f}")
    print(f"loss: first {first_loss:.4f}  last {loss:.4f} (random tokens: ln V = "
          f"{torch.log(torch.tensor(float(V))).item():.4f})")
    print(f"~{flops_per_token * tokens_per_s / 1e9:.1f} GFLOP/s (6N + attention estimate)")
    median_s = statistics.median(times)
    print(f"torch median_tokens_per_s {B * T / median_s:.1f} median_ms_per_step {1000 * median_s:.3f} "
          f"flops_per_token {flops_per_token}")
    print(f"torch tokens_per_s {tokens_per_s:.1f} ms_per_step {ms_per_step:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
