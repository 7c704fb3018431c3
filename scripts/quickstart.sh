#!/usr/bin/env bash
# The main job from a fresh machine: install packages, build, prepare Tiny Shakespeare (byte level),
# train configs/quickstart.yaml. Extra arguments go to `train` (e.g. --set train.max_steps=100).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
# Tiny Shakespeare (public domain, 1.1 MB) ships in the repository as data/tinyshakespeare.txt.
if [[ ! -f data/tinyshakespeare/train_000000.bin ]]; then
  python3 data/prepare.py --input data/tinyshakespeare.txt --out-dir data/tinyshakespeare --tokenizer byte
fi
exec build/train --config configs/quickstart.yaml "$@"
