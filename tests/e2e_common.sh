# Sourced by the end-to-end test scripts after they set TRAIN, SRC, CASE and PREFIX: a scratch directory
# per case ($WORK, the current directory), fail(), and byte-level Tiny Shakespeare shards in $DATA,
# prepared once per build tree.
WORK=$(pwd)/${PREFIX}_$CASE
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"

fail() { echo "FAIL ($CASE): $*" >&2; exit 1; }

DATA=$(dirname "$WORK")/ts_data
if [[ ! -f $DATA/train_000000.bin ]]; then
  python3 "$SRC/data/prepare.py" --input "$SRC/data/tinyshakespeare.txt" --out-dir "$DATA.$$" --tokenizer byte >/dev/null
  mv -T "$DATA.$$" "$DATA" 2>/dev/null || rm -rf "$DATA.$$"  # another test may have won the race
fi
