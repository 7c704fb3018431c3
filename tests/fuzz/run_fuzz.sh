#!/usr/bin/env bash
# Builds the libFuzzer targets (ASan + UBSan) and runs each for a time budget on a seeded corpus.
# usage: run_fuzz.sh SOURCE_DIR SECONDS_PER_TARGET        (FUZZ_CXX overrides the compiler)
# Exit: 0 clean, 1 a crash/hang/leak was found or a build failed, 77 skipped (no usable clang).
# Inputs that fail are kept in ./fuzz-artifacts/ with the commands that replay them.
set -u

usage="usage: run_fuzz.sh SOURCE_DIR SECONDS_PER_TARGET"
src=$(cd "${1:?$usage}" && pwd) || exit 1
seconds=${2:?$usage}

cxx=${FUZZ_CXX:-}
if [[ -z "$cxx" ]]; then
  for c in clang++-14 clang++; do
    if command -v "$c" >/dev/null 2>&1; then cxx=$c; break; fi
  done
fi
if [[ -z "$cxx" ]]; then
  echo "SKIP: clang++ not found (libFuzzer needs clang; install clang-14 and libclang-rt-14-dev)"
  exit 77
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/scmoe_fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
# -fno-sanitize-recover: UBSan's reports would otherwise scroll by without failing the run.
flags=(-std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -I"$src")

# clang without the fuzzer runtime (libclang-rt-*-dev) links no target at all: a skip, not a bug.
printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' >"$work/probe.cpp"
if ! "$cxx" "${flags[@]}" "$work/probe.cpp" -o "$work/probe" >"$work/probe.log" 2>&1; then
  echo "SKIP: $cxx cannot link -fsanitize=fuzzer (install libclang-rt-14-dev):"
  cat "$work/probe.log"
  exit 77
fi

declare -A build_cmd
build() {  # target name, then sources and libraries
  local name=$1
  shift
  build_cmd[$name]="$cxx ${flags[*]} $* -o $name"
  echo "== building $name"
  "$cxx" "${flags[@]}" "$@" -o "$work/$name" || { echo "FAIL: cannot build $name"; return 1; }
}

seed_corpora() {
  mkdir -p "$work/corpus_fuzz_config" "$work/corpus_fuzz_shard_header"
  if compgen -G "$src/configs/*.yaml" >/dev/null; then cp "$src"/configs/*.yaml "$work/corpus_fuzz_config/"; fi
  printf 'model:\n  arch: scmoe\n  d_model: 64\ncomm:\n  simulate_link: {bandwidth_gb_s: 1.5}\n' \
    >"$work/corpus_fuzz_config/seed.yaml"
  # YAML, then NUL-separated --set arguments (see fuzz_config.cpp).
  printf 'train: {seed: 1}\0optim.lr=1e-3\0model.arch=moe' >"$work/corpus_fuzz_config/seed_with_sets"
  # Found by this target: yaml-cpp's LoadAll looped on a leading ',' until memory ran out.
  printf ',$ldologmpariwon: shared experlo\316_ev' >"$work/corpus_fuzz_config/leading_comma"
  # Valid shards: header (magic 20240520, version, token count, zeros up to 1024 bytes), then tokens.
  python3 -c 'import struct,sys; sys.stdout.buffer.write(struct.pack("<3i", 20240520, 1, 3) + bytes(1012) + struct.pack("<3H", 1, 2, 3))' \
    >"$work/corpus_fuzz_shard_header/v1.bin"
  python3 -c 'import struct,sys; sys.stdout.buffer.write(struct.pack("<3i", 20240520, 2, 1) + bytes(1012) + struct.pack("<I", 70000))' \
    >"$work/corpus_fuzz_shard_header/v2.bin"
  mkdir -p "$work/corpus_fuzz_safetensors" "$work/corpus_fuzz_checkpoint_metadata" "$work/corpus_fuzz_meta_tokenizer" \
    "$work/corpus_fuzz_store_wire"
  # A small checkpoint-like file (with checksums) from the project's own writer, and its training state.
  /usr/bin/python3 - "$src" "$work" <<'PY'
import struct, sys, zlib
src, work = sys.argv[1], sys.argv[2]
sys.path.insert(0, src + "/tests/torch_ref")
import numpy as np
import st
st.write(work + "/corpus_fuzz_safetensors/ckpt.safetensors",
         {"m.wte": np.arange(6, dtype=np.float32).reshape(2, 3), "v.wte": np.ones(3, dtype=np.float64)},
         {"step": "12", "adam_t": "12", "data_epoch": "0", "data_cursor": "7", "rng_state": "99",
          "tokens_seen": "4096", "dtype": "F32", "format": "scmoe-checkpoint-1"})
open(work + "/corpus_fuzz_checkpoint_metadata/state.txt", "w").write(
    "step=12\nadam_t=12\ndata_epoch=0\ndata_cursor=7\nrng_state=99\ntokens_seen=4096\n")
open(work + "/corpus_fuzz_meta_tokenizer/meta", "wb").write(
    b'{"tokenizer": "gpt2", "vocab_size": 50257}\0' + b"".join(bytes([c]).hex().encode() + b"\n" for c in b"ab ")
    + b"\x0068 6c 6c 6f\n")
def s(x): return struct.pack("<I", len(x)) + x
open(work + "/corpus_fuzz_store_wire/requests", "wb").write(
    b"\x01" + s(b"rank/0") + s(b"1") + b"\x02" + s(b"gloo/0") + struct.pack("<Q", 30000)
    + b"\x03" + struct.pack("<I", 2) + s(b"rank/0") + s(b"rank/1") + struct.pack("<Q", 100)
    + b"\x04" + struct.pack("<I", 1) + s(b"alive/1"))
PY
  printf '"__metadata__"\n"dtype"\n"shape"\n"data_offsets"\n"F32"\n"F64"\n"BF16"\n"crc32:"\n"step"\n' \
    >"$work/fuzz_safetensors.dict"
}

# Key names as a dictionary, so that the fuzzer gets past "unknown key" to the values.
make_dict() {
  local md="$src/docs/config.md"
  printf '"true"\n"false"\n": "\n"\\x0a  "\n"{"\n"}"\n"="\n' >"$work/fuzz_config.dict"
  [[ -f "$md" ]] || return 0
  grep -o '^| `[a-z_.]*`' "$md" | tr -d '|` ' | tr '.' '\n' | sort -u | sed 's/.*/"&"/' >>"$work/fuzz_config.dict"
}

run() {  # target name, then extra libFuzzer flags
  local name=$1
  shift
  mkdir -p "$work/artifacts"
  echo "== fuzzing $name for ${seconds}s"
  if "$work/$name" "$@" -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/$name-" "$work/corpus_$name" >"$work/$name.log" 2>&1; then
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)' "$work/$name.log"
    return 0
  fi
  echo "FAIL: $name found a problem; its log ends with:"
  tail -n 40 "$work/$name.log"
  mkdir -p fuzz-artifacts
  for f in "$work/artifacts/$name-"*; do
    [[ -e "$f" ]] || continue
    cp "$f" fuzz-artifacts/
    echo "kept $(pwd)/fuzz-artifacts/$(basename "$f"); replay with:"
    echo "  ${build_cmd[$name]} && ./$name $(pwd)/fuzz-artifacts/$(basename "$f")"
  done
  return 1
}

seed_corpora
make_dict
status=0
build fuzz_config "$src/tests/fuzz/fuzz_config.cpp" "$src/train/config.cpp" -lyaml-cpp || status=1
build fuzz_shard_header "$src/tests/fuzz/fuzz_shard_header.cpp" "$src/data/shard.cpp" || status=1
build fuzz_safetensors "$src/tests/fuzz/fuzz_safetensors.cpp" "$src/train/safetensors.cpp" \
  "$src/train/checkpoint.cpp" "$src/core/crc32.cpp" || status=1
build fuzz_checkpoint_metadata "$src/tests/fuzz/fuzz_checkpoint_metadata.cpp" "$src/train/safetensors.cpp" \
  "$src/train/checkpoint.cpp" "$src/core/crc32.cpp" || status=1
build fuzz_meta_tokenizer "$src/tests/fuzz/fuzz_meta_tokenizer.cpp" "$src/data/tokenizer.cpp" \
  "$src/train/config.cpp" -lyaml-cpp || status=1
build fuzz_store_wire "$src/tests/fuzz/fuzz_store_wire.cpp" "$src/comm/store_wire.cpp" || status=1
[[ $status == 0 ]] || exit 1
run fuzz_config -dict="$work/fuzz_config.dict" || status=1
run fuzz_shard_header || status=1
run fuzz_safetensors -dict="$work/fuzz_safetensors.dict" || status=1
run fuzz_checkpoint_metadata || status=1
run fuzz_meta_tokenizer || status=1
run fuzz_store_wire || status=1
[[ $status == 0 ]] && echo "fuzzing clean"
exit $status
