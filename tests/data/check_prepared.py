#!/usr/bin/env python3
"""Checks data/prepare.py's output independently: shard headers, sizes, split counts, meta.json, and that
the shards (read directly and through --decode) give back the input's exact bytes, split val | train.
With --errors, checks instead that bad invocations fail with a clear message."""

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

MAGIC = 20240520
HEADER_BYTES = 1024


def fail(msg):
    print(f"check_prepared.py: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def expect(cond, msg):
    if not cond:
        fail(msg)


def read_byte_shard(path):
    """Parses a version-1 shard by hand (not via prepare.py, which is what is under test)."""
    with open(path, "rb") as f:
        blob = f.read()
    expect(len(blob) >= HEADER_BYTES, f"{path}: shorter than the header")
    header = struct.unpack_from("<256i", blob)
    expect(header[0] == MAGIC, f"{path}: magic {header[0]}")
    expect(header[1] == 1, f"{path}: version {header[1]}, expected 1 (uint16) for a 256-token vocabulary")
    expect(all(v == 0 for v in header[3:]), f"{path}: reserved header ints are not zero")
    count = header[2]
    expect(len(blob) == HEADER_BYTES + 2 * count, f"{path}: {len(blob)} bytes for {count} tokens")
    tokens = struct.unpack_from(f"<{count}H", blob, HEADER_BYTES)
    expect(all(t < 256 for t in tokens), f"{path}: token >= 256 from the byte tokenizer")
    return bytes(tokens)


def split_shards(out_dir, prefix, split):
    names = sorted(n for n in os.listdir(out_dir)
                   if n.startswith(f"{prefix}{split}_") and n.endswith(".bin"))
    expected = [f"{prefix}{split}_{i:06d}.bin" for i in range(len(names))]
    expect(names == expected, f"{split} shards are not numbered 000000..: {names}")
    return [os.path.join(out_dir, n) for n in names]


def check_split(paths, expected_bytes, shard_tokens, prepare, split):
    got = b""
    for i, path in enumerate(paths):
        part = read_byte_shard(path)
        last = i == len(paths) - 1
        expect(len(part) == shard_tokens or (last and 0 < len(part) <= shard_tokens),
               f"{path}: {len(part)} tokens with --shard-tokens {shard_tokens}")
        decoded = subprocess.run([sys.executable, prepare, "--decode", path], check=True,
                                 stdout=subprocess.PIPE).stdout
        expect(decoded == part, f"{path}: --decode output differs from the shard's bytes")
        got += part
    expect(got == expected_bytes,
           f"{split} shards do not hold the expected {len(expected_bytes)} input bytes (got {len(got)})")


def check_output(args):
    with open(args.input, "rb") as f:
        raw = f.read()
    n_val = args.val_tokens if args.val_tokens is not None else int(round(len(raw) * args.val_fraction))
    prefix = f"{args.name}_" if args.name else ""
    with open(os.path.join(args.dir, f"{prefix}meta.json")) as f:
        meta = json.load(f)
    expect(meta["tokenizer"] == "byte" and meta["vocab_size"] == 256, f"meta.json: {meta}")
    expect(meta["val_tokens"] == n_val and meta["train_tokens"] == len(raw) - n_val,
           f"meta.json val/train tokens {meta['val_tokens']}/{meta['train_tokens']}, "
           f"expected {n_val}/{len(raw) - n_val}")
    val = split_shards(args.dir, prefix, "val")
    train = split_shards(args.dir, prefix, "train")
    expect(meta["val_shards"] == [os.path.basename(p) for p in val], "meta.json val_shards")
    expect(meta["train_shards"] == [os.path.basename(p) for p in train], "meta.json train_shards")
    check_split(val, raw[:n_val], args.shard_tokens, args.prepare, "val")
    check_split(train, raw[n_val:], args.shard_tokens, args.prepare, "train")
    print(f"ok: {len(val)} val + {len(train)} train shards, {n_val} + {len(raw) - n_val} tokens, exact bytes")


def run_prepare(prepare, *argv):
    return subprocess.run([sys.executable, prepare, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)


def expect_error(prepare, argv, needle):
    r = run_prepare(prepare, *argv)
    expect(r.returncode != 0, f"prepare.py {argv} succeeded, expected an error with '{needle}'")
    expect(needle in r.stderr, f"prepare.py {argv}: stderr lacks '{needle}':\n{r.stderr}")
    expect("Traceback" not in r.stderr, f"prepare.py {argv}: a traceback instead of a message:\n{r.stderr}")


def check_errors(args):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        expect_error(args.prepare, ["--out-dir", out], "--input")
        missing = os.path.join(tmp, "missing.txt")
        expect_error(args.prepare, ["--input", missing, "--out-dir", out], "missing.txt")
        expect_error(args.prepare, ["--input", args.input, "--out-dir", out, "--val-tokens", "100000000"],
                     "must leave training tokens")
        expect_error(args.prepare, ["--input", args.input, "--out-dir", out, "--val-fraction", "1.5"],
                     "--val-fraction")
        expect_error(args.prepare, ["--input", args.input, "--out-dir", out, "--shard-tokens", "0"],
                     "--shard-tokens")
        not_shard = os.path.join(tmp, "not_a_shard.bin")
        with open(not_shard, "wb") as f:
            f.write(b"\0" * 2048)
        expect_error(args.prepare, ["--decode", not_shard], "wrong magic")
        try:
            import tiktoken  # noqa: F401  (only its absence is testable offline)
        except ImportError:
            expect_error(args.prepare, ["--input", args.input, "--out-dir", out, "--tokenizer", "gpt2"],
                         "pip install tiktoken")
        # Stale shards from an earlier, larger run must not stay behind to join the trainer's glob.
        r = run_prepare(args.prepare, "--input", args.input, "--out-dir", out, "--shard-tokens", "500")
        expect(r.returncode == 0, f"prepare.py failed:\n{r.stderr}")
        r = run_prepare(args.prepare, "--input", args.input, "--out-dir", out)
        expect(r.returncode == 0, f"prepare.py failed:\n{r.stderr}")
        left = sorted(os.listdir(out))
        expect(left == ["meta.json", "train_000000.bin", "val_000000.bin"], f"stale files left: {left}")
    print("ok: bad invocations fail with clear messages; stale shards are removed")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--prepare", required=True, help="path of data/prepare.py")
    p.add_argument("--input", required=True, help="the text file that was prepared")
    p.add_argument("--dir", help="the output directory prepare.py wrote")
    p.add_argument("--name", default="")
    p.add_argument("--val-tokens", type=int)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--shard-tokens", type=int, default=100_000_000)
    p.add_argument("--errors", action="store_true", help="check error handling instead of an output")
    args = p.parse_args()
    if args.errors:
        check_errors(args)
    else:
        expect(args.dir, "--dir is required unless --errors")
        check_output(args)


if __name__ == "__main__":
    main()
