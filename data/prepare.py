#!/usr/bin/env python3
"""Tokenizes a text file into scmoe/llm.c token shards (validation first, then training) plus meta.json.

Stdlib only; the gpt2 tokenizer additionally needs `pip install tiktoken`.
"""

import argparse
import array
import glob
import json
import os
import struct
import sys

MAGIC = 20240520
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
BYTE_VOCAB = 256
GPT2_VOCAB = 50257

EPILOG = """\
split:
  The first --val-tokens tokens of the text (default: --val-fraction 0.1 of them) become the
  validation split, the rest the training split, so validation text is never trained on.

output (NAME_ is omitted when --name is not given):
  DIR/NAME_val_000000.bin ...    validation shards
  DIR/NAME_train_000000.bin ...  training shards, at most --shard-tokens tokens each
  DIR/NAME_meta.json             {"tokenizer", "vocab_size", "train_tokens", "val_tokens", ...}
  Shards have a 256 x int32 header (magic 20240520, version, token count) then the tokens:
  uint16 (version 1) when the vocabulary has <= 65536 entries, else uint32 (version 2).
  The defaults match the trainer's default globs data/tinyshakespeare/train_*.bin and val_*.bin;
  set model.vocab_size to the printed vocabulary size.

examples:
  python3 data/prepare.py --input ../shared/data/tinyshakespeare.txt
  python3 data/prepare.py --input corpus.txt --tokenizer gpt2 --out-dir data/corpus
  python3 data/prepare.py --decode data/tinyshakespeare/val_000000.bin | head
"""


class PrepareError(Exception):
    """A user-facing error: printed without a traceback."""


# ---------------------------------------------------------------- tokenizers

def gpt2_encoding():
    try:
        import tiktoken  # optional dependency
    except ImportError:
        raise PrepareError("the gpt2 tokenizer needs tiktoken: `pip install tiktoken` "
                           "(or use --tokenizer byte, the built-in byte-level tokenizer, vocab 256)")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # first use downloads the BPE ranks; offline machines fail here
        raise PrepareError(f"tiktoken could not load the gpt2 encoding ({e}); it downloads its "
                           f"vocabulary on first use, or use --tokenizer byte")


def tokenize(raw, tokenizer):
    """Returns (tokens, vocab_size). `raw` is the file's bytes."""
    if tokenizer == "byte":
        return array.array("B", raw), BYTE_VOCAB  # exact bytes: any file round-trips
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PrepareError(f"input is not valid UTF-8 ({e}); the gpt2 tokenizer needs UTF-8 text, "
                           f"--tokenizer byte accepts any bytes")
    enc = gpt2_encoding()
    # Special-token strings in the text are ordinary text here, so the file round-trips exactly.
    return enc.encode_ordinary(text), enc.n_vocab


def detokenize(tokens, tokenizer):
    """Returns bytes for --decode."""
    if tokenizer == "byte":
        bad = next((t for t in tokens if t >= BYTE_VOCAB), None)
        if bad is not None:
            raise PrepareError(f"token {bad} is not a byte; this shard was not made with the byte "
                               f"tokenizer (try --tokenizer gpt2)")
        return bytes(tokens.tolist())
    return gpt2_encoding().decode_bytes(list(tokens))


# ---------------------------------------------------------------- shard format

def uint_array(version, values=()):
    """An array of unsigned 16-bit (version 1) or 32-bit (version 2) integers."""
    width = 2 if version == 1 else 4
    code = next(c for c in ("H", "I", "L") if array.array(c).itemsize == width)
    return array.array(code, values)


def write_shard(path, tokens, version):
    """Writes one shard under a temporary name, then renames it, so a partial file never has the real name."""
    data = uint_array(version, tokens)
    if sys.byteorder == "big":
        data.byteswap()  # the format is little-endian
    header = [0] * HEADER_INTS
    header[0:3] = [MAGIC, version, len(tokens)]
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack(f"<{HEADER_INTS}i", *header))
            f.write(data.tobytes())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_shard(path):
    """Returns (version, tokens) after checking the header against the file size."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < HEADER_BYTES:
        raise PrepareError(f"{path}: header incomplete ({len(blob)} bytes, need {HEADER_BYTES})")
    magic, version, count = struct.unpack_from("<3i", blob)
    if magic != MAGIC:
        raise PrepareError(f"{path}: not a token shard (wrong magic): found {magic}, expected {MAGIC}")
    if version not in (1, 2):
        raise PrepareError(f"{path}: unsupported version {version}")
    width = 2 if version == 1 else 4
    if count < 0 or len(blob) != HEADER_BYTES + count * width:
        raise PrepareError(f"{path}: header says {count} tokens ({count * width} bytes) but file has "
                           f"{len(blob) - HEADER_BYTES} bytes after the header")
    tokens = uint_array(version)
    tokens.frombytes(blob[HEADER_BYTES:])
    if sys.byteorder == "big":
        tokens.byteswap()
    return version, tokens


# ---------------------------------------------------------------- preparation

def split_point(total, args):
    if args.val_tokens is not None:
        n = args.val_tokens
    else:
        if not 0.0 <= args.val_fraction < 1.0:
            raise PrepareError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
        n = int(round(total * args.val_fraction))
    if n < 0 or n >= total:
        raise PrepareError(f"the validation split ({n} tokens) must leave training tokens: the text has "
                           f"{total} tokens")
    return n


def shard_names(out_dir, prefix, split, count):
    return [os.path.join(out_dir, f"{prefix}{split}_{i:06d}.bin") for i in range(count)]


def write_split(out_dir, prefix, split, tokens, shard_tokens, version):
    """Writes `tokens` as shards; removes older shards of this split that the new set does not replace."""
    count = (len(tokens) + shard_tokens - 1) // shard_tokens
    names = shard_names(out_dir, prefix, split, count)
    for i, name in enumerate(names):
        write_shard(name, tokens[i * shard_tokens:(i + 1) * shard_tokens], version)
        print(f"wrote {name}: {min(shard_tokens, len(tokens) - i * shard_tokens)} tokens")
    # A stale extra shard would silently join the trainer's glob.
    pattern = os.path.join(glob.escape(out_dir), f"{prefix}{split}_{'[0-9]' * 6}.bin")
    for old in sorted(set(glob.glob(pattern)) - set(names)):
        os.remove(old)
        print(f"removed stale {old}")
    return names


def prepare(args):
    if args.shard_tokens < 1:
        raise PrepareError(f"--shard-tokens must be >= 1, got {args.shard_tokens}")
    try:
        with open(args.input, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise PrepareError(f"cannot read --input {args.input}: {e.strerror}")
    tokens, vocab = tokenize(raw, args.tokenizer)
    if len(tokens) < 2:
        raise PrepareError(f"{args.input} has {len(tokens)} tokens; need at least 2 (one per split)")
    n_val = split_point(len(tokens), args)
    version = 1 if vocab <= 65536 else 2
    prefix = f"{args.name}_" if args.name else ""
    os.makedirs(args.out_dir, exist_ok=True)

    val = write_split(args.out_dir, prefix, "val", tokens[:n_val], args.shard_tokens, version)
    train = write_split(args.out_dir, prefix, "train", tokens[n_val:], args.shard_tokens, version)
    meta = {
        "tokenizer": args.tokenizer,
        "vocab_size": vocab,
        "train_tokens": len(tokens) - n_val,
        "val_tokens": n_val,
        "shard_version": version,
        "source": os.path.abspath(args.input),
        "train_shards": [os.path.basename(p) for p in train],
        "val_shards": [os.path.basename(p) for p in val],
    }
    meta_path = os.path.join(args.out_dir, f"{prefix}meta.json")
    with open(meta_path + ".tmp", "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    os.replace(meta_path + ".tmp", meta_path)
    print(f"wrote {meta_path}")
    print(f"{args.tokenizer} tokenizer: {len(tokens) - n_val} train + {n_val} val tokens; "
          f"set model.vocab_size >= {vocab}")
    print(f"data.train: {os.path.join(args.out_dir, prefix + 'train_*.bin')}")
    if val:
        print(f"data.val:   {os.path.join(args.out_dir, prefix + 'val_*.bin')}")
    else:
        print("warning: --val-tokens 0 wrote no validation shard; data.val will match nothing")


def decode(args):
    _, tokens = read_shard(args.decode)
    out = detokenize(tokens, args.tokenizer)
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()


# ---------------------------------------------------------------- command line

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--input", help="text file to tokenize")
    mode.add_argument("--decode", metavar="SHARD", help="print a shard's tokens back as text and exit")
    p.add_argument("--out-dir", default="data/tinyshakespeare",
                   help="output directory, relative to the current one (default: %(default)s)")
    p.add_argument("--name", default="", help="file-name prefix: NAME_train_000000.bin (default: none)")
    p.add_argument("--tokenizer", choices=("byte", "gpt2"), default="byte",
                   help="byte: UTF-8 bytes, vocab 256; gpt2: tiktoken's GPT-2 BPE, vocab 50257 "
                        "(default: %(default)s)")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--val-tokens", type=int, help="the first N tokens are the validation split")
    split.add_argument("--val-fraction", type=float, default=0.1,
                       help="the first F of the tokens are the validation split (default: %(default)s)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000,
                   help="maximum tokens per shard (default: %(default)s)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.decode:
            decode(args)
        else:
            prepare(args)
    except PrepareError as e:
        print(f"prepare.py: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `--decode ... | head` closing the pipe early is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
