"""Independent PyTorch reference of the scmoe GPT (loss and, through autograd, every gradient).

It is written from the model's specification, not from the C++ code, so that the reference test
(compare.py) cross-checks two implementations. Parameters live in one flat dict keyed by their
safetensors names; layers are plain functions of (params, name prefix, input), and an architecture
is a list of parameter specs plus a list of stages. That keeps parameter names independent of any
module nesting, so that blocks whose computation reads another block's activations (the ScMoE
shortcut taps) or own expert tensors need no special structure.

Architectures (cfg["arch"]): dense | moe | shared_expert | scmoe. Block l is an MoE block iff
arch != dense and (l + 1) % every == 0; every other block is a dense block. Every block computes
a = h + Attn(LN1(h)), u = LN2(a), then
    dense block:            out = a + MLP(u)
    moe:                    out = a + MoE(u)
    shared_expert:          out = a + SE(u) + MoE(u)
    scmoe:                  out = a + combine(SE(u), MoE(x)), x the shortcut tap:
        position 1: x = NormMoE(h_l)      (this block's input)
        position 2: x = u_{l-1}           (LN2 output of the preceding block)
        position 3: x = NormMoE(h_{l-1})  (the preceding block's input)
        combine add: SE + MoE;  cg1: sigmoid(u Wc^T) * SE + MoE;  cg2: softmax(u Wc^T) weights both.
The MoE layer: softmax (or per-expert sigmoid) scores, top-k on the scores plus an optional
expert bias (ties towards the lower expert index; the bias never enters a gate), optional
renormalisation, capacity cap = min(k * ceil(cf * N / E), N) per expert (cf <= 0: dropless) with
assignments admitted choice-major, load-balancing aux loss (on the scores normalised over the
experts), router z-loss and DeepSeek-V3's sequence-level balance loss.

GPT.forward returns (logits, objective) with objective = cross-entropy + sum over MoE layers of
(aux_loss_coef * aux + z_loss_coef * z); after a forward, model.last_ce, model.last_aux (detached)
and model.moe_stats (routing statistics per MoE layer) hold the parts.
"""

import math

import torch
import torch.nn.functional as F

NORM_EPS = 1e-5
INIT_STD = 0.02

_INT_KEYS = ("n_layer", "d_model", "n_head", "d_ff", "seq_len", "vocab_size")

ARCH_NAMES = ("dense", "moe", "shared_expert", "scmoe")
COMBINES = ("add", "cg1", "cg2")

# Router z-loss. The spec writes it as mean_n(logsumexp(logits[n,:]))^2, i.e. the square of the
# mean ("square_of_mean"); the ST-MoE paper's z-loss is the mean of the squares ("mean_of_square").
# compare.py can switch this (--z-loss) and, on an aux_loss mismatch, says which form matches.
Z_LOSS_FORMS = ("square_of_mean", "mean_of_square")
Z_LOSS_FORM = "mean_of_square"  # ST-MoE: mean over tokens of logsumexp^2

# MoE settings: (parser, default). A default of None for top_k means: 2 for arch moe, else 1.
_MOE_KEYS = {
    "num_experts": (int, 8),
    "top_k": (int, None),
    "every": (int, 2),
    "capacity_factor": (float, 2.0),
    "aux_loss_coef": (float, 0.01),
    "z_loss_coef": (float, 0.0),
    "renormalize": ("bool", True),
    "position": (int, 2),
    "combine": (str, "cg1"),
    "gate_noise": (float, 0.0),
    "score": (str, "softmax"),
    "seq_aux_loss_coef": (float, 0.0),
    "expert_bias": ("bool", False),
}


def _parse_bool(key, v):
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("1", "true"):
        return True
    if isinstance(v, str) and v.strip().lower() in ("0", "false"):
        return False
    raise ValueError(f"config {key} must be 1/0 (or true/false), got {v!r}")


def _parse_moe_value(key, v):
    kind = _MOE_KEYS[key][0]
    if kind == "bool":
        return _parse_bool(key, v)
    if key == "gate_noise" and isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return 1.0 if v.strip().lower() == "true" else 0.0
    try:
        if kind is int and isinstance(v, float):
            raise ValueError
        if kind is int and isinstance(v, str):
            return int(v.strip(), 10)
        return kind(v)
    except (TypeError, ValueError):
        raise ValueError(f"config {key} must be {kind.__name__}, got {v!r}") from None


def make_config(n_layer, d_model, n_head, d_ff, seq_len, vocab_size, norm="layernorm",
                arch="dense", **extra):
    """A validated config dict. MoE settings (see _MOE_KEYS) are parsed (strings accepted, as
    metadata gives them) and defaulted; any other extra keys are kept as given."""
    cfg = dict(n_layer=int(n_layer), d_model=int(d_model), n_head=int(n_head), d_ff=int(d_ff),
               seq_len=int(seq_len), vocab_size=int(vocab_size), norm=str(norm), arch=str(arch))
    cfg.update(extra)
    for k in _INT_KEYS:
        if cfg[k] <= 0:
            raise ValueError(f"config {k} must be positive, got {cfg[k]}")
    if cfg["d_model"] % cfg["n_head"]:
        raise ValueError(f"d_model {cfg['d_model']} is not divisible by n_head {cfg['n_head']}")
    if cfg["norm"] not in ("layernorm", "rmsnorm"):
        raise ValueError(f"norm must be layernorm or rmsnorm, got {cfg['norm']!r}")
    if cfg["arch"] not in ARCHS:
        raise ValueError(f"arch {cfg['arch']!r} is not implemented here (have: {sorted(ARCHS)})")
    for key, (_, default) in _MOE_KEYS.items():
        if key in cfg and cfg[key] is not None:
            cfg[key] = _parse_moe_value(key, cfg[key])
        else:
            cfg[key] = default
    if cfg["top_k"] is None:
        cfg["top_k"] = 2 if cfg["arch"] == "moe" else 1
    if cfg["arch"] != "dense":
        _validate_moe(cfg)
    return cfg


def _validate_moe(cfg):
    E, k = cfg["num_experts"], cfg["top_k"]
    if E < 1:
        raise ValueError(f"num_experts must be >= 1, got {E}")
    if not 1 <= k <= E:
        raise ValueError(f"top_k must be in [1, num_experts = {E}], got {k}")
    if cfg["every"] < 1:
        raise ValueError(f"every must be >= 1, got {cfg['every']}")
    for key in ("capacity_factor", "aux_loss_coef", "z_loss_coef", "seq_aux_loss_coef"):
        if not math.isfinite(cfg[key]):
            raise ValueError(f"{key} must be finite, got {cfg[key]}")
    if cfg["score"] not in ("softmax", "sigmoid"):
        raise ValueError(f"score must be softmax or sigmoid, got {cfg['score']!r}")
    if cfg["gate_noise"] != 0:
        raise ValueError("gate_noise must be 0: the reference has no (random) gate noise")
    if not any(is_moe_block(cfg, l) for l in range(cfg["n_layer"])):
        raise ValueError(f"arch {cfg['arch']} with n_layer {cfg['n_layer']} and every "
                         f"{cfg['every']} has no MoE block")
    if cfg["arch"] == "scmoe":
        if cfg["position"] not in (1, 2, 3):
            raise ValueError(f"position must be 1, 2 or 3, got {cfg['position']}")
        if cfg["combine"] not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {cfg['combine']!r}")
        if cfg["position"] in (2, 3) and is_moe_block(cfg, 0):
            # Positions 2 and 3 tap block l-1, which block 0 does not have.
            raise ValueError(f"scmoe position {cfg['position']} needs a preceding block, but "
                             f"block 0 is an MoE block (every = {cfg['every']})")


def config_from_metadata(meta):
    """Config from safetensors metadata, where every value is a string."""
    missing = [k for k in _INT_KEYS + ("norm",) if k not in meta]
    arch = meta.get("arch", "dense")
    if arch != "dense":
        # MoE dumps must state every setting the computation depends on: a default here could
        # silently differ from the C++ side's.
        need = ["num_experts", "top_k", "every", "capacity_factor", "aux_loss_coef",
                "z_loss_coef", "renormalize"]
        if arch == "scmoe":
            need += ["position", "combine"]
        missing += [k for k in need if k not in meta]
    if missing:
        raise ValueError(f"metadata lacks {missing}")
    known = set(_INT_KEYS) | {"norm", "arch", "dtype"}
    extra = {k: v for k, v in meta.items() if k not in known}
    return make_config(**{k: meta[k] for k in _INT_KEYS}, norm=meta["norm"], arch=arch, **extra)


def is_moe_block(cfg, l):
    return cfg["arch"] != "dense" and (l + 1) % cfg["every"] == 0


def moe_layers(cfg):
    return [l for l in range(cfg["n_layer"]) if is_moe_block(cfg, l)]


# ---------------------------------------------------------------------------------------------
# Layers: functions of the flat parameter dict p and a name prefix.

def norm(p, prefix, x, kind):
    if kind == "layernorm":
        # F.layer_norm uses the biased variance and eps inside the sqrt, as the spec asks.
        return F.layer_norm(x, x.shape[-1:], p[prefix + ".weight"], p[prefix + ".bias"], NORM_EPS)
    ms = x.pow(2).mean(dim=-1, keepdim=True)
    return x * torch.rsqrt(ms + NORM_EPS) * p[prefix + ".weight"]


def linear(p, prefix, x):
    return F.linear(x, p[prefix + ".weight"], p[prefix + ".bias"])


def attention(p, prefix, x, n_head):
    B, T, C = x.shape
    hd = C // n_head
    q, k, v = linear(p, prefix + ".qkv", x).split(C, dim=-1)
    # Head h owns channels [h*hd, (h+1)*hd): view as (B, T, H, hd), then put heads first.
    q, k, v = (t.view(B, T, n_head, hd).transpose(1, 2) for t in (q, k, v))
    att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
    future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
    att = att.masked_fill(future, float("-inf")).softmax(dim=-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, C)
    return linear(p, prefix + ".proj", y)


def mlp(p, prefix, x):
    return linear(p, prefix + ".proj", F.gelu(linear(p, prefix + ".fc", x), approximate="tanh"))


def moe_capacity(cfg, N):
    """Per-expert capacity for N tokens: min(k * ceil(cf * N / E), N), or N * k when dropless."""
    E, k, cf = cfg["num_experts"], cfg["top_k"], cfg["capacity_factor"]
    if cf > 0:
        return min(k * math.ceil(cf * N / E), N)
    return N * k


def moe(p, prefix, x, cfg, ctx, layer):
    """Routed experts on every token row of x [B, T, C]; returns [B, T, C].

    Appends the layer's coefficient-weighted aux + z loss to ctx["aux"] and its routing
    statistics to ctx["stats"].
    """
    B, T, C = x.shape
    N, E, k = B * T, cfg["num_experts"], cfg["top_k"]
    xf = x.reshape(N, C)  # row n = b * T + t
    logits = xf @ p[prefix + ".gate.weight"].t()  # [N, E]
    # Scores: softmax over the experts, or a sigmoid per expert; the balance losses average the
    # scores normalised over the experts (q), which for softmax are the scores themselves.
    if cfg["score"] == "sigmoid":
        probs = torch.sigmoid(logits)
        q = probs / probs.sum(dim=-1, keepdim=True)
    else:
        probs = logits.softmax(dim=-1)
        q = probs
    # The expert bias (auxiliary-loss-free balancing) shifts the choice only: a constant added to the
    # detached scores, never to a gate.
    keys = probs.detach()
    bias = ctx["state"].get(prefix + ".expert_bias")
    if bias is not None:
        keys = keys + bias.to(keys.dtype)
    # Stable descending sort: among equal keys the lower expert index comes first.
    sorted_probs, order = torch.sort(keys, dim=-1, descending=True, stable=True)
    idx = order[:, :k]  # [N, k], j = 0 .. k-1 in descending key
    gates = probs.gather(1, idx)
    if cfg["renormalize"] and k > 1:
        gates = gates / gates.sum(dim=-1, keepdim=True)

    # Capacity, choice-major: the sequence (j = 0: n = 0..N-1), (j = 1: n = 0..N-1), ...; an
    # assignment is admitted iff fewer than cap earlier assignments of the sequence went to its
    # expert (earlier dropped ones never count, since an expert only drops once it is full).
    cap = moe_capacity(cfg, N)
    seq = idx.t().reshape(-1)  # [k * N], choice-major
    rank = (F.one_hot(seq, E).cumsum(dim=0) - 1).gather(1, seq[:, None])[:, 0]
    admitted = (rank < cap).reshape(k, N).t()  # [N, k]

    out = torch.zeros_like(xf)
    for e in range(E):
        n, j = torch.nonzero((idx == e) & admitted, as_tuple=True)
        if n.numel() == 0:
            continue
        y = mlp(p, f"{prefix}.experts.{e}", xf[n]) * gates[n, j].unsqueeze(-1)
        out = out.index_add(0, n, y)

    # Load balancing: E * sum_e mean_n(p_e) * count_e / (N k), counts before capacity, constant.
    counts = torch.bincount(idx.reshape(-1), minlength=E).to(probs.dtype)
    aux = E * torch.sum(q.mean(dim=0) * counts / (N * k))
    # DeepSeek-V3's sequence-level balance loss: per sequence, E/(k T) sum_e count_e * mean_t q_e,
    # counts constant, averaged over the B sequences.
    seq_counts = F.one_hot(idx, E).sum(dim=1).reshape(B, T, E).sum(dim=1).to(probs.dtype)  # [B, E]
    seq_aux = (E / (k * T) * (seq_counts * q.reshape(B, T, E).mean(dim=1)).sum(dim=-1)).mean()
    lse = torch.logsumexp(logits, dim=-1)
    if Z_LOSS_FORM == "square_of_mean":
        z = lse.mean() ** 2
    elif Z_LOSS_FORM == "mean_of_square":
        z = (lse ** 2).mean()
    else:
        raise ValueError(f"Z_LOSS_FORM must be one of {Z_LOSS_FORMS}, got {Z_LOSS_FORM!r}")
    ctx["aux"].append(cfg["aux_loss_coef"] * aux + cfg["z_loss_coef"] * z + cfg["seq_aux_loss_coef"] * seq_aux)
    # Statistics stay tensors (no device sync); compare.py reads them after the forward.
    margin = (sorted_probs[:, k - 1] - sorted_probs[:, k]).min() if k < E else None
    ctx["stats"].append(dict(layer=layer, prefix=prefix, tokens=N, cap=cap,
                             counts=counts.detach(),
                             admitted=torch.bincount(idx[admitted], minlength=E),
                             dropped=(~admitted).sum().detach(), margin=margin,
                             aux=aux.detach(), z=z.detach()))
    return out.reshape(B, T, C)


def block(p, cfg, l, h, ctx):
    """Block l on its input h [B, T, C]; records h and u in ctx for the next block's taps."""
    prefix, kind = f"blocks.{l}", cfg["norm"]
    a = h + attention(p, prefix + ".attn", norm(p, prefix + ".ln1", h, kind), cfg["n_head"])
    u = norm(p, prefix + ".ln2", a, kind)
    ctx["h"][l], ctx["u"][l] = h, u
    if not is_moe_block(cfg, l):
        return a + mlp(p, prefix + ".mlp", u)
    arch = cfg["arch"]
    if arch == "moe":
        return a + moe(p, prefix + ".moe", u, cfg, ctx, l)
    if arch == "shared_expert":
        return a + mlp(p, prefix + ".shared_expert", u) + moe(p, prefix + ".moe", u, cfg, ctx, l)
    assert arch == "scmoe"
    pos = cfg["position"]
    if pos == 1:
        x = norm(p, prefix + ".moe.norm", h, kind)
    elif pos == 2:
        x = ctx["u"][l - 1]
    else:
        x = norm(p, prefix + ".moe.norm", ctx["h"][l - 1], kind)
    se = mlp(p, prefix + ".shared_expert", u)
    routed = moe(p, prefix + ".moe", x, cfg, ctx, l)
    combine = cfg["combine"]
    if combine == "add":
        return a + se + routed
    logit = u @ p[prefix + ".combine.weight"].t()
    if combine == "cg1":
        return a + torch.sigmoid(logit) * se + routed
    alpha = logit.softmax(dim=-1)
    return a + alpha[..., 0:1] * se + alpha[..., 1:2] * routed


# ---------------------------------------------------------------------------------------------
# Architectures. A builder returns (specs, stages):
#   specs:  list of (name, shape, init) with init in {"normal", "proj", "ones", "zeros"};
#   stages: list of callables stage(p, x, ctx) -> x, run in order between embedding and ln_f.
#           ctx is a per-forward dict: "aux" (list of scalar losses GPT.forward adds to the
#           cross-entropy), "stats" (routing statistics), "h" / "u" (block inputs and LN2
#           outputs by block index, for the shortcut taps).

def norm_specs(cfg, prefix):
    specs = [(prefix + ".weight", (cfg["d_model"],), "ones")]
    if cfg["norm"] == "layernorm":
        specs.append((prefix + ".bias", (cfg["d_model"],), "zeros"))
    return specs


def linear_specs(prefix, n_out, n_in, init="normal"):
    return [(prefix + ".weight", (n_out, n_in), init), (prefix + ".bias", (n_out,), "zeros")]


def mlp_specs(cfg, prefix):
    C, Fd = cfg["d_model"], cfg["d_ff"]
    return linear_specs(prefix + ".fc", Fd, C) + linear_specs(prefix + ".proj", C, Fd, "proj")


def block_specs(cfg, l):
    prefix, C = f"blocks.{l}", cfg["d_model"]
    specs = (norm_specs(cfg, prefix + ".ln1")
             + linear_specs(prefix + ".attn.qkv", 3 * C, C)
             + linear_specs(prefix + ".attn.proj", C, C, "proj")
             + norm_specs(cfg, prefix + ".ln2"))
    if not is_moe_block(cfg, l):
        return specs + mlp_specs(cfg, prefix + ".mlp")
    arch = cfg["arch"]
    if arch in ("shared_expert", "scmoe"):
        specs += mlp_specs(cfg, prefix + ".shared_expert")
    if arch == "scmoe":
        if cfg["combine"] != "add":
            n_logits = 1 if cfg["combine"] == "cg1" else 2
            specs.append((prefix + ".combine.weight", (n_logits, C), "normal"))
        if cfg["position"] in (1, 3):
            specs += norm_specs(cfg, prefix + ".moe.norm")
    specs.append((prefix + ".moe.gate.weight", (cfg["num_experts"], C), "normal"))
    for e in range(cfg["num_experts"]):
        specs += mlp_specs(cfg, f"{prefix}.moe.experts.{e}")
    return specs


def build_blocks(cfg):
    specs, stages = [], []
    for l in range(cfg["n_layer"]):
        specs += block_specs(cfg, l)
        # Default argument binds this block's index (a closure would see the last one).
        stages.append(lambda p, x, ctx, l=l: block(p, cfg, l, x, ctx))
    return specs, stages


# Every architecture is one builder: block_specs / block dispatch on cfg["arch"].
ARCHS = {name: build_blocks for name in ARCH_NAMES}


# ---------------------------------------------------------------------------------------------

class GPT(torch.nn.Module):
    """GPT(config, params=None, dtype=torch.float64).

    self.p maps safetensors names to Parameters, in a fixed order (embeddings, blocks, ln_f).
    They are also registered on the module (with '.' -> '__', which nn.Module requires) so that
    .parameters(), optimizers and .to() work as usual.
    """

    def __init__(self, config, params=None, dtype=torch.float64, device="cpu"):
        super().__init__()
        self.cfg = config
        C = config["d_model"]
        block_specs_, self.stages = ARCHS[config["arch"]](config)
        self.specs = ([("wte", (config["vocab_size"], C), "normal"),
                       ("wpe", (config["seq_len"], C), "normal")]
                      + block_specs_ + norm_specs(config, "ln_f"))
        self.p = {}
        for name, shape, _ in self.specs:
            if name in self.p:
                raise ValueError(f"architecture builder declared {name!r} twice")
            param = torch.nn.Parameter(torch.zeros(shape, dtype=dtype, device=device))
            self.p[name] = param
            self.register_parameter(name.replace(".", "__"), param)
        # Model state outside the parameters: the expert biases (fp32 values, no gradient).
        self.state = {}
        if config["arch"] != "dense" and config["expert_bias"]:
            for l in moe_layers(config):
                self.state[f"blocks.{l}.moe.expert_bias"] = torch.zeros(config["num_experts"], dtype=dtype,
                                                                        device=device)
        self.last_ce = self.last_aux = None
        self.moe_stats = []
        self.init_params()
        if params is not None:
            self.load_params(params)

    @property
    def param_names(self):
        return list(self.p)

    @torch.no_grad()
    def init_params(self, seed=0, std=INIT_STD):
        """GPT-2 style: N(0, std), residual projections scaled by 1/sqrt(2L), norms at 1/0."""
        gen = torch.Generator().manual_seed(seed)
        proj_std = std / math.sqrt(2 * self.cfg["n_layer"])
        for name, shape, init in self.specs:
            t = self.p[name]
            if init in ("normal", "proj"):
                s = std if init == "normal" else proj_std
                t.copy_(torch.randn(shape, generator=gen, dtype=torch.float64) * s)
            else:
                t.fill_(1.0 if init == "ones" else 0.0)

    @torch.no_grad()
    def load_params(self, params):
        """Copy every parameter from params (name -> tensor or numpy array), casting to our dtype.

        The names must match exactly: a missing or extra tensor is a naming bug between the two
        implementations and must not be silently ignored.
        """
        missing = sorted((set(self.p) | set(self.state)) - set(params))
        extra = sorted(set(params) - set(self.p) - set(self.state))
        if missing or extra:
            raise KeyError(f"parameter names differ: missing {missing}, unexpected {extra}")
        for name, t in self.state.items():
            t.copy_(torch.as_tensor(params[name]).to(dtype=t.dtype, device=t.device))
        for name, t in self.p.items():
            src = torch.as_tensor(params[name])
            if tuple(src.shape) != tuple(t.shape):
                raise ValueError(f"{name}: shape {tuple(src.shape)}, expected {tuple(t.shape)}")
            t.copy_(src.to(dtype=t.dtype, device=t.device))

    def grad(self, name):
        """The gradient of parameter name after backward, zeros where autograd left none (an
        expert that received no token is not in the graph)."""
        p = self.p[name]
        return p.grad if p.grad is not None else torch.zeros_like(p)

    def forward(self, idx, targets=None):
        """Returns (logits [B, T, V], objective or None); idx and targets are integer [B, T].

        objective = mean cross-entropy + the MoE layers' weighted aux and z losses; the parts are
        left in self.last_ce and self.last_aux (0 without MoE layers), detached.
        """
        B, T = idx.shape
        if T > self.cfg["seq_len"]:
            raise ValueError(f"sequence length {T} exceeds seq_len {self.cfg['seq_len']}")
        idx = idx.long()
        x = self.p["wte"][idx] + self.p["wpe"][:T]
        ctx = {"aux": [], "stats": [], "h": {}, "u": {}, "state": self.state}
        for stage in self.stages:
            x = stage(self.p, x, ctx)
        self.moe_stats = ctx["stats"]
        x = norm(self.p, "ln_f", x, self.cfg["norm"])
        logits = x @ self.p["wte"].t()  # tied head
        if targets is None:
            return logits, None
        ce = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T).long())
        loss = ce
        aux_total = torch.zeros((), dtype=ce.dtype, device=ce.device)
        for a in ctx["aux"]:
            aux_total = aux_total + a
        if ctx["aux"]:
            loss = ce + aux_total
        self.last_ce, self.last_aux = ce.detach(), aux_total.detach()
        return logits, loss
