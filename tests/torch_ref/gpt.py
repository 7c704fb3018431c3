"""Independent PyTorch reference of the scmoe GPT (loss and, through autograd, every gradient).

It is written from the model's specification, not from the C++ code, so that the reference test
(compare.py) cross-checks two implementations. Parameters live in one flat dict keyed by their
safetensors names; layers are plain functions of (params, name prefix, input), and an architecture
is a list of parameter specs plus a list of stages. That keeps parameter names independent of any
module nesting, so that MoE variants whose stages span two blocks (the ScMoE pair reads
blocks.{l}.* and blocks.{l+1}.*) or own expert tensors can be added as further builders in ARCHS.
"""

import math

import torch
import torch.nn.functional as F

NORM_EPS = 1e-5
INIT_STD = 0.02

_INT_KEYS = ("n_layer", "d_model", "n_head", "d_ff", "seq_len", "vocab_size")


def make_config(n_layer, d_model, n_head, d_ff, seq_len, vocab_size, norm="layernorm",
                arch="dense", **extra):
    """A validated config dict; extra keys (future MoE settings) are kept as given."""
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
    return cfg


def config_from_metadata(meta):
    """Config from safetensors metadata, where every value is a string."""
    missing = [k for k in _INT_KEYS + ("norm",) if k not in meta]
    if missing:
        raise ValueError(f"metadata lacks {missing}")
    known = set(_INT_KEYS) | {"norm", "arch", "dtype"}
    extra = {k: v for k, v in meta.items() if k not in known}
    return make_config(**{k: meta[k] for k in _INT_KEYS}, norm=meta["norm"],
                       arch=meta.get("arch", "dense"), **extra)


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


def dense_block(p, prefix, x, cfg):
    x = x + attention(p, prefix + ".attn", norm(p, prefix + ".ln1", x, cfg["norm"]), cfg["n_head"])
    return x + mlp(p, prefix + ".mlp", norm(p, prefix + ".ln2", x, cfg["norm"]))


# ---------------------------------------------------------------------------------------------
# Architectures. A builder returns (specs, stages):
#   specs:  list of (name, shape, init) with init in {"normal", "proj", "ones", "zeros"};
#   stages: list of callables stage(p, x, aux) -> x, run in order between embedding and ln_f.
#           aux is a list to which a stage may append scalar losses (MoE balance / z-loss);
#           GPT.forward adds them to the cross-entropy.

def norm_specs(cfg, prefix):
    specs = [(prefix + ".weight", (cfg["d_model"],), "ones")]
    if cfg["norm"] == "layernorm":
        specs.append((prefix + ".bias", (cfg["d_model"],), "zeros"))
    return specs


def linear_specs(prefix, n_out, n_in, init="normal"):
    return [(prefix + ".weight", (n_out, n_in), init), (prefix + ".bias", (n_out,), "zeros")]


def dense_block_specs(cfg, prefix):
    C, Fd = cfg["d_model"], cfg["d_ff"]
    return (norm_specs(cfg, prefix + ".ln1")
            + linear_specs(prefix + ".attn.qkv", 3 * C, C)
            + linear_specs(prefix + ".attn.proj", C, C, "proj")
            + norm_specs(cfg, prefix + ".ln2")
            + linear_specs(prefix + ".mlp.fc", Fd, C)
            + linear_specs(prefix + ".mlp.proj", C, Fd, "proj"))


def build_dense(cfg):
    specs, stages = [], []
    for l in range(cfg["n_layer"]):
        prefix = f"blocks.{l}"
        specs += dense_block_specs(cfg, prefix)
        # Default argument binds this block's prefix (a closure would see the last one).
        stages.append(lambda p, x, aux, prefix=prefix: dense_block(p, prefix, x, cfg))
    return specs, stages


ARCHS = {"dense": build_dense}


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
        block_specs, self.stages = ARCHS[config["arch"]](config)
        self.specs = ([("wte", (config["vocab_size"], C), "normal"),
                       ("wpe", (config["seq_len"], C), "normal")]
                      + block_specs + norm_specs(config, "ln_f"))
        self.p = {}
        for name, shape, _ in self.specs:
            if name in self.p:
                raise ValueError(f"architecture builder declared {name!r} twice")
            param = torch.nn.Parameter(torch.zeros(shape, dtype=dtype, device=device))
            self.p[name] = param
            self.register_parameter(name.replace(".", "__"), param)
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
        missing = sorted(set(self.p) - set(params))
        extra = sorted(set(params) - set(self.p))
        if missing or extra:
            raise KeyError(f"parameter names differ: missing {missing}, unexpected {extra}")
        for name, t in self.p.items():
            src = torch.as_tensor(params[name])
            if tuple(src.shape) != tuple(t.shape):
                raise ValueError(f"{name}: shape {tuple(src.shape)}, expected {tuple(t.shape)}")
            t.copy_(src.to(dtype=t.dtype, device=t.device))

    def forward(self, idx, targets=None):
        """Returns (logits [B, T, V], loss or None); idx and targets are integer [B, T]."""
        B, T = idx.shape
        if T > self.cfg["seq_len"]:
            raise ValueError(f"sequence length {T} exceeds seq_len {self.cfg['seq_len']}")
        idx = idx.long()
        x = self.p["wte"][idx] + self.p["wpe"][:T]
        aux = []
        for stage in self.stages:
            x = stage(self.p, x, aux)
        x = norm(self.p, "ln_f", x, self.cfg["norm"])
        logits = x @ self.p["wte"].t()  # tied head
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T).long())
        for a in aux:
            loss = loss + a
        return logits, loss
