#!/usr/bin/env python3
"""Re-shard an scmoe checkpoint to another number of ranks (expert-parallel size).

usage: scripts/reshard_checkpoint.py SRC_DIR DST_DIR --world-size N [--allow-optim-mismatch]

A checkpoint directory (train/checkpoint.h) holds
  model.safetensors                        every replicated (non-expert) parameter, and the MoE layers'
                                           expert biases (blocks.L.moe.expert_bias; state without moments)
  experts-rankRRRRR-of-WWWWW.safetensors   rank R's routed experts, named with their GLOBAL index
                                           (blocks.L.moe.experts.E.*); rank R holds experts
                                           [R*E/W, (R+1)*E/W)                  (MoE models only)
  optim-rankRRRRR-of-WWWWW.safetensors     AdamW moments m.<name>, v.<name> of every parameter the
                                           rank holds, and the training state in __metadata__
  config.yaml, COMPLETE

Re-sharding to N ranks copies model.safetensors and config.yaml, regroups the expert tensors into N
experts files, and writes N optim files: the replicated moments (identical on every source rank;
checked) plus the moments of the rank's new experts, with the metadata of the source (step, optimizer
t, data position, RNG state, ...) and world_size / rank / experts_per_rank set for the new layout.
Dense checkpoints work too (only the optim files change). Tensors keep their dtype and values bit for
bit; nothing is recomputed. Every tensor read is checked against the CRC-32 its file stores (and must
hold finite values); the files written carry their own checksums, as train writes them.

The result is written to a temporary sibling of DST_DIR, COMPLETE is written last, and the directory
is renamed into place, so an interrupted run never leaves a DST_DIR that looks complete. An existing
DST_DIR is never overwritten.

Resume on N ranks with `--resume DST_DIR`, e.g.
  scripts/reshard_checkpoint.py runs/a/checkpoints/step_00001000 runs/b/checkpoints/step_00001000 --world-size 2
  train/launch --nproc-per-node 2 -- build/train --config CFG --set train.out_dir=runs/b --resume auto
(`--resume auto` only looks in train.out_dir/checkpoints, so either put DST_DIR there, named
step_NNNNNNNN, or pass DST_DIR explicitly.)

The whole source checkpoint is read into memory once (numpy, no other dependency).
Exit status 0 on success, 1 with a message on stderr for every error.
"""

import argparse
import os
import re
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "torch_ref"))
import st  # noqa: E402  (the project's numpy safetensors reader/writer)

EXPERT_RE = re.compile(r"^blocks\.(\d+)\.moe\.experts\.(\d+)\.(.+)$")
RANK_FILE_RE = re.compile(r"^(experts|optim)-rank(\d{5})-of-(\d{5})\.safetensors$")
GLOBAL_METADATA = ("step", "adam_t", "data_epoch", "data_cursor", "rng_state", "tokens_seen", "dtype", "format")
ST_DTYPE_OF = {"float64": np.dtype("<f8"), "float32": np.dtype("<f4")}


class ReshardError(Exception):
    pass


def is_state(name):
    """Model state kept beside the parameters with no optimizer moments (the MoE expert biases)."""
    return name.endswith(".moe.expert_bias")


def rank_file(stem, rank, world):
    return f"{stem}-rank{rank:05d}-of-{world:05d}.safetensors"


def warn(msg):
    print(f"reshard_checkpoint: warning: {msg}", file=sys.stderr)


def read_st(path):
    """A checkpoint file's tensors and metadata; checksums verified (st.read), weights finite."""
    try:
        tensors, md = st.read(path)
    except FileNotFoundError:
        raise ReshardError(f"{path}: missing") from None
    except (st.SafetensorsError, OSError) as e:
        msg = str(e)
        msg = msg[len(path) + 2:] if msg.startswith(path + ": ") else msg
        raise ReshardError(f"{path}: not a readable safetensors file: {msg}") from None
    for n, a in tensors.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            i = int(np.flatnonzero(~np.isfinite(a.reshape(-1)))[0])
            raise ReshardError(f"{path}: tensor '{n}' holds a non-finite value at element {i}: the checkpoint "
                               "is corrupt, or training had diverged before it was written")
    return tensors, md


def parse_config(path):
    """The resolved config.yaml the trainer writes (nested 'key: value' maps), as {'a.b': 'value'}."""
    flat, stack = {}, []  # stack of (indent, key)
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.split(" #", 1)[0].rstrip()
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            indent = len(line) - len(line.lstrip(" "))
            key, sep, value = line.strip().partition(":")
            if not sep:
                raise ReshardError(f"{path}:{lineno}: expected 'key: value', got {raw.strip()!r}")
            while stack and stack[-1][0] >= indent:
                stack.pop()
            full = ".".join([k for _, k in stack] + [key.strip()])
            value = value.strip()
            if value:
                flat[full] = value.strip('"').strip("'")
            else:
                stack.append((indent, key.strip()))
    return flat


def expert_of(name):
    """(layer, expert, suffix) for a routed-expert tensor name, else None."""
    m = EXPERT_RE.match(name)
    return (int(m.group(1)), int(m.group(2)), m.group(3)) if m else None


def order_key_fn(template):
    """A sort key reproducing the trainer's tensor order (the parameter table's), learnt from one
    rank's list of names: replicated tensors where they stand, each layer's experts as one group at
    the place of its first expert tensor, expert-major inside it."""
    pos, group_pos, suffix_pos = {}, {}, {}
    for i, name in enumerate(template):
        e = expert_of(name)
        if e is None:
            pos[name] = i
        else:
            layer, _, suffix = e
            group_pos.setdefault(layer, i)
            suffix_pos.setdefault(layer, {}).setdefault(suffix, len(suffix_pos[layer]))

    def key(name):
        e = expert_of(name)
        if e is None:
            return (pos.get(name, len(template)), -1, 0, name)
        layer, expert, suffix = e
        return (group_pos.get(layer, len(template)), expert, suffix_pos.get(layer, {}).get(suffix, 1 << 30), name)

    return key


def load_source(src):
    if not os.path.isdir(src):
        raise ReshardError(f"source checkpoint '{src}' is not a directory" if os.path.exists(src)
                           else f"source checkpoint '{src}' does not exist")
    base = os.path.basename(os.path.normpath(src))
    if base.startswith(".tmp-"):
        raise ReshardError(f"'{src}' is a temporary directory of a checkpoint that was never finished; "
                           "pick a complete one (step_NNNNNNNN with a COMPLETE file)")
    names = sorted(os.listdir(src))
    rank_files = {"experts": {}, "optim": {}}
    worlds = set()
    for n in names:
        m = RANK_FILE_RE.match(n)
        if m:
            rank_files[m.group(1)][int(m.group(2))] = n
            worlds.add(int(m.group(3)))
    if not rank_files["optim"]:
        hint = ""
        steps = [n for n in names if n.startswith("step_")] or \
            [n for n in (os.listdir(os.path.join(src, "checkpoints")) if os.path.isdir(os.path.join(src, "checkpoints"))
                         else []) if n.startswith("step_")]
        if steps:
            hint = f" (it looks like a run or checkpoints directory: pass one checkpoint, e.g. .../{sorted(steps)[-1]})"
        raise ReshardError(f"'{src}' holds no optim-rank*-of-*.safetensors files: not an scmoe checkpoint{hint}")
    if "COMPLETE" not in names:
        raise ReshardError(f"'{src}' has no COMPLETE marker: the checkpoint was never finished (a rank died "
                           "while writing it?); pick another one")
    for n in ("model.safetensors", "config.yaml"):
        if n not in names:
            raise ReshardError(f"'{src}' lacks {n}: incomplete or damaged checkpoint")
    if len(worlds) != 1:
        raise ReshardError(f"'{src}' mixes files of different world sizes ({sorted(worlds)}): damaged checkpoint")
    world = worlds.pop()
    missing = [rank_file("optim", r, world) for r in range(world) if r not in rank_files["optim"]]
    if missing:
        raise ReshardError(f"'{src}' lacks {', '.join(missing)}: incomplete checkpoint")
    extra = [n for n in names if n not in ("model.safetensors", "config.yaml", "COMPLETE") and not RANK_FILE_RE.match(n)]
    if extra:
        warn(f"ignoring unexpected entries in {src}: {', '.join(extra)}")

    cfg = parse_config(os.path.join(src, "config.yaml"))
    arch = cfg.get("model.arch")
    if arch is None:
        raise ReshardError(f"{os.path.join(src, 'config.yaml')}: no model.arch; not the config of an scmoe checkpoint")
    model, model_md = read_st(os.path.join(src, "model.safetensors"))
    # The expert biases are replicated state without moments: they travel with model.safetensors (copied).
    model = {n: a for n, a in model.items() if not is_state(n)}
    bad = [n for n in model if expert_of(n)]
    if bad:
        raise ReshardError(f"{os.path.join(src, 'model.safetensors')} holds expert tensors ({bad[0]}, ...); "
                           "experts belong in the experts-rank files")

    num_experts = 0
    if arch != "dense":
        try:
            num_experts = int(cfg["moe.num_experts"])
        except (KeyError, ValueError):
            raise ReshardError(f"{os.path.join(src, 'config.yaml')}: no integer moe.num_experts for arch {arch}") from None
    experts = {}  # name -> array, global names
    if arch == "dense":
        if rank_files["experts"]:
            raise ReshardError(f"'{src}' is a dense checkpoint (config.yaml) but holds experts files")
    else:
        missing = [rank_file("experts", r, world) for r in range(world) if r not in rank_files["experts"]]
        if missing:
            raise ReshardError(f"'{src}' lacks {', '.join(missing)}: incomplete checkpoint")
        if num_experts % world:
            raise ReshardError(f"'{src}': moe.num_experts {num_experts} is not divisible by its world size {world}")
        per = num_experts // world
        for r in range(world):
            path = os.path.join(src, rank_files["experts"][r])
            tensors, _ = read_st(path)
            for n, a in tensors.items():
                e = expert_of(n)
                if e is None:
                    raise ReshardError(f"{path}: tensor '{n}' is not a routed-expert tensor")
                if not r * per <= e[1] < (r + 1) * per:
                    raise ReshardError(f"{path}: expert {e[1]} ('{n}') does not belong to rank {r} "
                                       f"(which holds experts {r * per}..{(r + 1) * per - 1})")
                experts[n] = a
        found = sorted({expert_of(n)[1] for n in experts})
        if found != list(range(num_experts)):
            raise ReshardError(f"'{src}': experts files hold experts {found}, config.yaml says moe.num_experts "
                               f"{num_experts}: damaged checkpoint")

    optim, metas = [], []
    for r in range(world):
        path = os.path.join(src, rank_files["optim"][r])
        tensors, md = read_st(path)
        want_md = dict(world_size=str(world), rank=str(r))
        for k in GLOBAL_METADATA + ("world_size", "rank", "experts_per_rank"):
            if k not in md:
                raise ReshardError(f"{path}: metadata lacks '{k}': not an scmoe checkpoint (or an older format)")
        for k, v in want_md.items():
            if md[k] != v:
                raise ReshardError(f"{path}: metadata says {k}={md[k]}, the file name says {v}: damaged checkpoint")
        if md["experts_per_rank"] != str(num_experts // world):
            raise ReshardError(f"{path}: metadata experts_per_rank={md['experts_per_rank']}, expected "
                               f"{num_experts // world} ({num_experts} experts over {world} ranks)")
        if md["dtype"] not in ST_DTYPE_OF:
            raise ReshardError(f"{path}: unknown dtype '{md['dtype']}' in metadata")
        if r > 0:
            diff = [k for k in GLOBAL_METADATA if md[k] != metas[0][k]]
            if diff:
                raise ReshardError(f"{path}: training state differs from rank 0's "
                                   f"({', '.join(f'{k}: {metas[0][k]} vs {md[k]}' for k in diff)}); "
                                   "the ranks' files do not belong to one checkpoint")
        # Every tensor the rank holds must have both moments, with the tensor's shape.
        held = set(model) | {n for n in experts
                             if arch != "dense" and r * (num_experts // world) <= expert_of(n)[1]
                             < (r + 1) * (num_experts // world)}
        names_in = set()
        for n, a in tensors.items():
            if not (n.startswith("m.") or n.startswith("v.")):
                raise ReshardError(f"{path}: unexpected tensor '{n}' (optimizer files hold m.<name> and v.<name>)")
            names_in.add(n[2:])
            p = n[2:]
            ref = model.get(p, experts.get(p))
            if p not in held:
                raise ReshardError(f"{path}: '{n}' is the moment of a tensor rank {r} does not hold")
            if ref is not None and tuple(a.shape) != tuple(ref.shape):
                raise ReshardError(f"{path}: '{n}' has shape {list(a.shape)}, the parameter has {list(ref.shape)}")
            if a.dtype != ST_DTYPE_OF[md["dtype"]]:
                raise ReshardError(f"{path}: '{n}' is {a.dtype}, metadata says dtype {md['dtype']}")
        for p in sorted(held):
            for pre in ("m.", "v."):
                if pre + p not in tensors:
                    raise ReshardError(f"{path}: '{pre}{p}' missing: damaged checkpoint")
        optim.append(tensors)
        metas.append(md)
    return dict(world=world, arch=arch, num_experts=num_experts, model=model, experts=experts, optim=optim,
                metas=metas, optim_order=[n[2:] for n in optim[0] if n.startswith("m.")])


def check_replicated_moments(srcd, src, allow_mismatch):
    """Replicated moments are the same on every rank after the gradient all-reduce: verify it."""
    bad = []
    for name in srcd["model"]:
        for pre in ("m.", "v."):
            ref = srcd["optim"][0][pre + name]
            for r in range(1, srcd["world"]):
                other = srcd["optim"][r][pre + name]
                if ref.tobytes() != other.tobytes():
                    d = float(np.max(np.abs(ref.astype(np.float64) - other.astype(np.float64))))
                    bad.append(f"{pre}{name} (rank {r} vs rank 0, max |diff| {d:.3g})")
    if bad:
        more = " ..." if len(bad) > 5 else ""
        count = f"{len(bad)} tensor" + ("s" if len(bad) != 1 else "")
        msg = (f"'{src}': the optimizer moments of replicated tensors differ between ranks ({count}): "
               f"{'; '.join(bad[:5])}{more}")
        if not allow_mismatch:
            raise ReshardError(msg + ". The ranks were out of sync; pass --allow-optim-mismatch to use "
                               "rank 0's copies anyway")
        warn(msg + "; using rank 0's copies (--allow-optim-mismatch)")


def fsync_path(path, is_dir=False):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if is_dir else 0))
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory
    finally:
        os.close(fd)


def write_checkpoint(srcd, src, tmp, world):
    key = order_key_fn(srcd["optim_order"])
    num_experts = srcd["num_experts"]
    per = num_experts // world if num_experts else 0
    written = []

    def put(name, tensors, metadata=None):
        path = os.path.join(tmp, name)
        st.write(path, tensors, metadata)
        fsync_path(path)
        written.append(name)

    shutil.copyfile(os.path.join(src, "model.safetensors"), os.path.join(tmp, "model.safetensors"))
    shutil.copyfile(os.path.join(src, "config.yaml"), os.path.join(tmp, "config.yaml"))
    for n in ("model.safetensors", "config.yaml"):
        fsync_path(os.path.join(tmp, n))
    replicated = sorted(srcd["model"], key=key)
    for r in range(world):
        mine = sorted((n for n in srcd["experts"] if r * per <= expert_of(n)[1] < (r + 1) * per), key=key)
        if srcd["arch"] != "dense":
            put(rank_file("experts", r, world), {n: srcd["experts"][n] for n in mine})
        # Moments of this rank's experts come from whichever source rank held them.
        src_per = num_experts // srcd["world"] if num_experts else 1
        params = sorted(replicated + mine, key=key)
        tensors = {}
        for pre in ("m.", "v."):
            for n in params:
                owner = 0 if expert_of(n) is None else expert_of(n)[1] // src_per
                tensors[pre + n] = srcd["optim"][owner][pre + n]
        md = dict(srcd["metas"][0])
        md.update(world_size=str(world), rank=str(r), experts_per_rank=str(per))
        put(rank_file("optim", r, world), tensors, md)
    # COMPLETE last, once everything above is on disk.
    with open(os.path.join(tmp, "COMPLETE"), "wb") as f:
        os.fsync(f.fileno())
    fsync_path(tmp, is_dir=True)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Re-shard an scmoe checkpoint directory to another number of ranks.",
        epilog="Resume with `--resume DST_DIR` on WORLD_SIZE ranks; `--resume auto` finds DST_DIR only when it "
               "is train.out_dir/checkpoints/step_NNNNNNNN.")
    ap.add_argument("src", metavar="SRC_DIR", help="a complete checkpoint directory (…/checkpoints/step_NNNNNNNN)")
    ap.add_argument("dst", metavar="DST_DIR", help="where to write the re-sharded checkpoint (must not exist)")
    ap.add_argument("--world-size", type=int, required=True, metavar="N", help="number of ranks to re-shard to")
    ap.add_argument("--allow-optim-mismatch", action="store_true",
                    help="if the replicated optimizer moments differ between source ranks, warn and use rank 0's "
                         "(default: abort)")
    args = ap.parse_args(argv)
    src, dst, world = args.src, os.path.normpath(args.dst), args.world_size
    tmp = None
    try:
        if world < 1:
            raise ReshardError(f"--world-size must be >= 1, got {world}")
        if os.path.lexists(dst):
            raise ReshardError(f"destination '{dst}' already exists; refusing to overwrite it (remove it or pick "
                               "another name)")
        srcd = load_source(src)
        if srcd["arch"] != "dense" and srcd["num_experts"] % world:
            ok = [w for w in range(1, srcd["num_experts"] + 1) if srcd["num_experts"] % w == 0]
            raise ReshardError(f"cannot re-shard to --world-size {world}: moe.num_experts {srcd['num_experts']} "
                               f"is not divisible by {world} (every rank must hold the same number of experts); "
                               f"possible world sizes: {', '.join(map(str, ok))}")
        check_replicated_moments(srcd, src, args.allow_optim_mismatch)
        parent = os.path.dirname(os.path.abspath(dst))
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".tmp-reshard-{os.path.basename(dst)}-{os.getpid()}")
        os.mkdir(tmp)
        write_checkpoint(srcd, src, tmp, world)
        if os.path.lexists(dst):  # appeared meanwhile
            raise ReshardError(f"destination '{dst}' appeared while writing; refusing to overwrite it")
        os.rename(tmp, dst)
        tmp = None
        fsync_path(parent, is_dir=True)
    except (ReshardError, OSError) as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"reshard_checkpoint: error: {e}", file=sys.stderr)
        return 1
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    md = srcd["metas"][0]
    plural = "" if world == 1 else "s"
    what = (f"{srcd['num_experts']} experts, {srcd['num_experts'] // world} per rank" if srcd["arch"] != "dense"
            else "dense model")
    print(f"re-sharded {src} (step {md['step']}, {srcd['world']} ranks) -> {dst} ({world} rank{plural}, {what})")
    print(f"resume with: train/launch --nproc-per-node {world} -- build/train ... --resume {dst}")
    if not (re.fullmatch(r"step_\d{8,18}", os.path.basename(dst)) and os.path.basename(parent) == "checkpoints"):
        print("note: `--resume auto` looks only in train.out_dir/checkpoints/step_NNNNNNNN; pass this directory "
              "explicitly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
