#!/usr/bin/env bash
# The main job from a fresh machine: install packages, build, prepare Tiny Shakespeare (byte level),
# train configs/quickstart.yaml. Extra arguments go to `train` (e.g. --set train.max_steps=100).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
text=${SCMOE_TEXT:-../shared/data/tinyshakespeare.txt}
if [[ ! -f data/tinyshakespeare/train_000000.bin ]]; then
  if [[ ! -f $text ]]; then
    text=data/tinyshakespeare.txt
    [[ -f $text ]] || curl -fsSL -o "$text" \
      https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
  fi
  python3 data/prepare.py --input "$text" --out-dir data/tinyshakespeare --tokenizer byte
fi
exec build/train --config configs/quickstart.yaml "$@"
