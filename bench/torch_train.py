#!/usr/bin/env python3
"""CPU training throughput of the GPT in PyTorch (dense or MoE), the baseline for our C++ trainer.

Same model as tests/torch_ref/gpt.py (the reference the C++ gradients are checked against), float32,
random tokens, AdamW + global-norm clipping, so a step does the same work as a `train` step.
--arch moe|shared_expert|scmoe selects the MoE architectures (options as the moe.* / scmoe.* config
keys); the reference MoE loops over experts on one device, so it is a functional baseline only.
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
    args = ap.parse_args(argv)
    if args.d_ff is None:
        args.d_ff = 4 * args.d_model
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    return args


def make_optimizer(model):
    # Decay matrices and embeddings only, not norms and biases (the usual GPT recipe); the split
    # hardly changes the cost of a step, which is what this script measures.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=1e-3, betas=(0.9, 0.95))


def main(argv=None):
    args = parse_args(argv)
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
    model = gpt.GPT(cfg, dtype=torch.float32)
    model.init_params(seed=args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    # Active parameters per token: each MoE layer runs top_k of its num_experts experts.
    expert_params = 2 * args.d_model * args.d_ff + args.d_ff + args.d_model
    n_moe = len(gpt.moe_layers(cfg))
    n_active = n_params - n_moe * (cfg["num_experts"] - cfg["top_k"]) * expert_params
    opt = make_optimizer(model)

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
    batches = [(torch.randint(0, V, (B, T), generator=gen), torch.randint(0, V, (B, T), generator=gen))
               for _ in range(n_batches)]

    def step(i):
        x, y = batches[i % n_batches]
        _, loss = step_fn_model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()  # .item() also makes sure the step has really finished

    first_loss = None
    for i in range(args.warmup):
        loss = step(i)
        first_loss = loss if first_loss is None else first_loss
    times = []
    for i in range(args.warmup, args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = step(i)
        times.append(time.perf_counter() - t0)
        first_loss = loss if first_loss is None else first_loss

    total = sum(times)
    ms_per_step = 1000.0 * total / len(times)
    tokens_per_s = B * T * len(times) / total
    # 6 * active params * tokens for the matmuls plus attention's 12 * L * T * C per token
    # (fwd + bwd); dropped assignments are ignored.
    flops_per_token = 6 * n_active + 12 * args.n_layer * T * args.d_model
    print(f"torch {torch.__version__} on {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, {compile_note}")
    arch_desc = args.arch
    if args.arch != "dense":
        arch_desc += (f" (E={cfg['num_experts']} top_k={cfg['top_k']} every={cfg['every']} "
                      f"cf={cfg['capacity_factor']:g}")
        if args.arch == "scmoe":
            arch_desc += f" position={cfg['position']} combine={cfg['combine']}"
        arch_desc += f"; {n_active / 1e6:.2f} M active)"
    print(f"model: {arch_desc} L={args.n_layer} C={args.d_model} H={args.n_head} F={args.d_ff} "
          f"T={T} V={V} norm={args.norm}, {n_params / 1e6:.2f} M params, float32")
    print(f"batch {B} x {T} = {B * T} tokens/step, {args.warmup} warm-up + {args.steps} timed steps")
    print(f"step ms: mean {ms_per_step:.2f}  median {1000 * statistics.median(times):.2f}  "
          f"min {1000 * min(times):.2f}  max {1000 * max(times):.2f}")
    print(f"loss: first {first_loss:.4f}  last {loss:.4f} (random tokens: ln V = "
          f"{torch.log(torch.tensor(float(V))).item():.4f})")
    print(f"~{flops_per_token * tokens_per_s / 1e9:.1f} GFLOP/s (6N + attention estimate)")
    print(f"torch tokens_per_s {tokens_per_s:.1f} ms_per_step {ms_per_step:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
