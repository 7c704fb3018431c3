#!/usr/bin/env bash
# The GPU benchmark (docs/gpu_benchmarks.md): on a machine with an NVIDIA GPU, in one run,
#   1. configure + build the CUDA backend for this GPU's compute capability only (ninja),
#   2. ctest -L gpu (native kernel suites, whole-model CUDA vs CPU), compute-sanitizer memcheck over the
#      gpu_* suites and racecheck over two of them (when compute-sanitizer exists),
#   3. bench_gpu_kernels (per-kernel time vs the bandwidth / matrix-rate floor),
#   4. `train` on the CUDA backend, GPT-2 small (L12 C768 H12 F3072 T1024 V50304), fp32 and bf16,
#   5. the same model in PyTorch on the same GPU (bench/torch_train.py: eager and torch.compile),
#   6. the results (tokens/s, MFU, speed-ups, kernel table, overlap, test status) into
#      docs/gpu_benchmarks.md,
#   7. expert offloading in generation on this GPU (DEVICE=cuda bench/offload.sh: real PCIe link, pinned
#      memory, blocking vs async vs speculative) into docs/results/offload_table_cuda.md,
#   8. the ScMoE overlap on the device: GPT-2-small ScMoE Pos-2 on one rank with a simulated link,
#      comm.overlap true (the exchanges on a high-priority communication stream, ordered by CUDA events)
#      vs false (the sequential reference): step time and the overlap the events measure.
# --quick (one call of about 10 minutes with the build): the build, ctest -L gpu, compute-sanitizer on two
# kernel suites, dense bf16 ours vs PyTorch (eager, compile), and the overlap stage.
#
#   bench/gpu.sh [--quick] [--batch B] [--steps N] [options]     (bench/gpu.sh --help lists them)
#
# Exit status: 0 done (every stage passed); 1 a stage failed (the report still says which) or bad
# arguments; 77 no usable NVIDIA GPU here: nothing is built or run, the docs are left alone.
# shellcheck disable=SC2317,SC2016  # functions run through stage(); bash -c bodies quoted on purpose
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

usage() {
  cat <<'EOF'
usage: bench/gpu.sh [options]
  --quick            a shorter run (batch 8, 15 steps; compute-sanitizer on two suites; dense bf16 only
                     beside PyTorch eager and compile; the overlap stage; no kernel table, no offload)
  --batch B          sequences per step for the model benchmark (default 16; --quick 8)
  --steps N          training steps of ours (default 30; --quick 15; the first 5 are left out)
  --kernel-batch B   batch of the per-kernel benchmark (default 8)
  --build-dir DIR    build directory (default build-gpu)
  --cuda-arch LIST   CMAKE_CUDA_ARCHITECTURES (default: this GPU's compute capability, e.g. 90)
  --out-dir DIR      where logs, metrics and tables go (default runs/gpu_bench/<UTC time>)
  --doc FILE         Markdown file whose results section is replaced (default docs/gpu_benchmarks.md)
  --no-doc           leave the docs alone (print the report only)
  --no-build         use the existing build directory as it is
  --deps DIR         .deb files from scripts/gpu_deps.sh (yaml-cpp, Boost, Gloo, OpenBLAS) for a machine
                     that lacks them: unpacked into a private prefix (dpkg -x) and built against
  --link-gb-s G      the overlap stage's simulated link (default 4 GB/s, 20 us latency)
  --no-tests --no-sanitizer --no-kernels --no-train --no-torch --no-offload --no-overlap   skip a stage
  --torch-moe        also run the MoE architectures in PyTorch (bf16 eager, reference only)
  -h, --help         this text
Exit status: 0 all stages passed, 1 a stage failed, 77 no usable NVIDIA GPU (nothing run).
EOF
}

QUICK=0 BATCH="" STEPS="" KBATCH=8 BUILD=build-gpu RUN="" DOC=docs/gpu_benchmarks.md CC="" DEPS=""
DO_BUILD=1 DO_TESTS=1 DO_SAN=1 DO_KERNELS=1 DO_TRAIN=1 DO_TORCH=1 DO_OFFLOAD=1 DO_OVERLAP=1 TORCH_MOE=0 LINK_GB_S=4
ARGS="$*"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --batch) BATCH=${2:?--batch needs a value}; shift ;;
    --steps) STEPS=${2:?--steps needs a value}; shift ;;
    --kernel-batch) KBATCH=${2:?--kernel-batch needs a value}; shift ;;
    --build-dir) BUILD=${2:?--build-dir needs a value}; shift ;;
    --cuda-arch) CC=${2:?--cuda-arch needs a value}; shift ;;
    --out-dir) RUN=${2:?--out-dir needs a value}; shift ;;
    --doc) DOC=${2:?--doc needs a value}; shift ;;
    --no-doc) DOC="" ;;
    --no-build) DO_BUILD=0 ;;
    --deps) DEPS=${2:?--deps needs a directory}; shift ;;
    --no-tests) DO_TESTS=0 ;;
    --no-sanitizer) DO_SAN=0 ;;
    --no-kernels) DO_KERNELS=0 ;;
    --no-train) DO_TRAIN=0 ;;
    --no-torch) DO_TORCH=0 ;;
    --no-offload) DO_OFFLOAD=0 ;;
    --no-overlap) DO_OVERLAP=0 ;;
    --link-gb-s) LINK_GB_S=${2:?--link-gb-s needs a value}; shift ;;
    --torch-moe) TORCH_MOE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench/gpu.sh: unknown option '$1' (see --help)" >&2; exit 1 ;;
  esac
  shift
done
for v in "${BATCH:-1}" "${STEPS:-6}" "$KBATCH"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "bench/gpu.sh: expected a positive integer, got '$v'" >&2; exit 1; }
done
if ((QUICK)); then
  BATCH=${BATCH:-8} STEPS=${STEPS:-15} TORCH_STEPS=6 TORCH_WARMUP=2
  SAN_SUITES=(gpu_norm gpu_permute) RACE_SUITES=(gpu_norm)
  DO_KERNELS=0 DO_OFFLOAD=0
else
  BATCH=${BATCH:-16} STEPS=${STEPS:-30} TORCH_STEPS=10 TORCH_WARMUP=3
  SAN_SUITES=() RACE_SUITES=(gpu_norm gpu_permute)  # empty SAN_SUITES: every gpu_* suite
fi
WARM=5  # our steps left out of the median (allocator, cuBLASLt heuristics, clocks)
((STEPS > WARM)) || { echo "bench/gpu.sh: --steps must exceed $WARM (the warm-up steps)" >&2; exit 1; }
SAN_TIMEOUT=90 TORCH_TIMEOUT=300 TRAIN_TIMEOUT=300
SAN_BUDGET=$((QUICK ? 90 : 180))  # the whole sanitizer stage; suites not started in time are listed as such

# ---- The model: GPT-2 small. Architectures: our `train` flags and bench/torch_train.py's flags for each.
# OURS_CUDA lists what `train.device=cuda` trains today: add an architecture there (one line) once its
# CUDA port lands; the others get a "not on the CUDA backend yet" row.
MODEL_SETS=(--set model.n_layer=12 --set model.d_model=768 --set model.n_head=12 --set model.d_ff=3072
  --set model.seq_len=1024 --set model.vocab_size=50304)
MODEL_TORCH=(--n-layer 12 --d-model 768 --n-head 12 --d-ff 3072 --seq-len 1024 --vocab-size 50304)
ARCHS=(dense moe shared_expert scmoe)
declare -A ARCH_SETS ARCH_TORCH
ARCH_SETS[dense]="--set model.arch=dense"
ARCH_SETS[moe]="--set model.arch=moe --set moe.num_experts=8 --set moe.top_k=2 --set moe.every=2"
ARCH_SETS[shared_expert]="--set model.arch=shared_expert --set moe.num_experts=8 --set moe.top_k=1 --set moe.every=2"
ARCH_SETS[scmoe]="--set model.arch=scmoe --set moe.num_experts=8 --set moe.top_k=1 --set moe.every=2 --set scmoe.position=2 --set scmoe.combine=cg1"
ARCH_TORCH[dense]="--arch dense"
ARCH_TORCH[moe]="--arch moe --num-experts 8 --top-k 2 --every 2"
ARCH_TORCH[shared_expert]="--arch shared_expert --num-experts 8 --top-k 1 --every 2"
ARCH_TORCH[scmoe]="--arch scmoe --num-experts 8 --top-k 1 --every 2 --position 2 --combine cg1"
OURS_CUDA=(dense)
OURS_CUDA+=(moe)
OURS_CUDA+=(shared_expert)
OURS_CUDA+=(scmoe)

# ---- Is there a GPU? Decided before anything is built, so that a machine without one stops at once.
export PATH="$PATH:/usr/local/cuda/bin"
no_gpu() {
  echo "bench/gpu.sh: SKIPPED: no usable NVIDIA GPU on this machine ($1)."
  echo "  Nothing was run${DOC:+ and $DOC is unchanged}; run this script where an NVIDIA GPU is (docs/gpu_benchmarks.md)."
  exit 77
}
if command -v nvidia-smi >/dev/null 2>&1; then
  smi_out=$(nvidia-smi -L 2>&1) || no_gpu "nvidia-smi failed: $(echo "$smi_out" | head -1)"
  grep -q '^GPU ' <<<"$smi_out" || no_gpu "nvidia-smi lists no GPU"
elif ! compgen -G '/dev/nvidia[0-9]*' >/dev/null; then
  no_gpu "no nvidia-smi and no /dev/nvidia* device"
fi
command -v nvcc >/dev/null 2>&1 || {
  echo "bench/gpu.sh: a GPU is present but nvcc is not (PATH or /usr/local/cuda/bin): install the CUDA toolkit" >&2
  exit 1
}

RUN=${RUN:-runs/gpu_bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$RUN"
echo "bench/gpu.sh: results go to $RUN"
STAGES="$RUN/stages.tsv"
: >"$STAGES"
FAILED=0
# stage NAME COMMAND...: runs it, records status and seconds; output goes where the command sends it.
stage() {
  local name=$1 t0=$SECONDS rc
  shift
  echo "== $name"
  "$@"
  rc=$?
  local status=ok
  ((rc == 0)) || { status="FAILED (exit $rc)"; FAILED=1; }
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" >>"$STAGES"
  echo "== $name: $status, $((SECONDS - t0)) s"
  return $rc
}

# A python for the stdlib scripts (data/prepare.py, bench/gpu_report.py), and one whose torch has CUDA.
PY=""
for p in python3 /usr/bin/python3 python; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 7))' 2>/dev/null; then
    PY=$p
    break
  fi
done
[[ -n $PY ]] || { echo "bench/gpu.sh: no python3 found" >&2; exit 1; }
TORCH_PY="" TORCH_VERSION="not available (no python with torch and CUDA here)"
for p in python3 /usr/bin/python3 /opt/torch/.venv/bin/python3; do
  if command -v "$p" >/dev/null 2>&1 &&
    v=$("$p" -c 'import sys, torch; ok = torch.cuda.is_available(); print(f"{torch.__version__} (CUDA {torch.version.cuda})"); sys.exit(0 if ok else 1)' 2>/dev/null); then
    TORCH_PY=$p TORCH_VERSION=$v
    break
  fi
done

# ---- 1. Build for this GPU only (the default 80;90 pair doubles nvcc's work).
if [[ -z $CC ]]; then
  CC=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
  [[ $CC =~ ^[0-9]+$ ]] || CC=native
fi
# --deps: the libraries of scripts/gpu_deps.sh, unpacked (not installed) into a prefix that CMake searches
# first and the programs find at run time.
DEPS_ARGS=()
if [[ -n $DEPS ]]; then
  PFX=$(realpath -m "$BUILD/deps")
  mkdir -p "$PFX"
  for f in "$DEPS"/*.deb; do dpkg -x "$f" "$PFX" || { echo "bench/gpu.sh: cannot unpack $f" >&2; exit 1; }; done
  A=$PFX/usr/lib/x86_64-linux-gnu
  DEPS_ARGS=(-DCMAKE_PREFIX_PATH="$PFX/usr" -DCMAKE_LIBRARY_PATH="$PFX/usr/lib;$A;$A/openblas-pthread"
             -DCMAKE_INCLUDE_PATH="$PFX/usr/include;$PFX/usr/include/x86_64-linux-gnu/openblas-pthread")
  export LD_LIBRARY_PATH="$PFX/usr/lib:$A:$A/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "dependencies from $DEPS unpacked into $PFX"
fi
build() {
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSCMOE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$CC" \
    "${DEPS_ARGS[@]}" >"$RUN/configure.log" 2>&1 || {
    tail -20 "$RUN/configure.log"
    echo "hint: the build needs what scripts/setup.sh installs (yaml-cpp, Boost.ProgramOptions, Gloo, OpenBLAS):"
    echo "      fetch them with scripts/gpu_deps.sh where Debian's archive is reachable, then --deps DIR"
    echo "      and the CUDA toolkit with cuBLAS and NCCL; or pass --no-build --build-dir DIR with a build from elsewhere"
    return 1
  }
  # What this script runs: train, the kernel benchmark and every gpu-labelled test executable.
  local targets
  targets=$(ninja -C "$BUILD" -t targets all 2>/dev/null | sed -n 's/^\(gpu_[A-Za-z0-9_]*\|test_stream_cuda\): phony$/\1/p')
  # shellcheck disable=SC2086
  ninja -C "$BUILD" train bench_gpu_kernels $targets >"$RUN/build.log" 2>&1 || { tail -30 "$RUN/build.log"; return 1; }
  tail -1 "$RUN/build.log"
}
if ((DO_BUILD)); then
  stage build build || { echo "bench/gpu.sh: the build failed (log: $RUN/build.log)" >&2; exit 1; }
fi
[[ -x $BUILD/train && -x $BUILD/bench/bench_gpu_kernels ]] || {
  echo "bench/gpu.sh: $BUILD/train or $BUILD/bench/bench_gpu_kernels missing (drop --no-build?)" >&2
  exit 1
}

# The device as the CUDA runtime sees it (also: is it usable from here?), and the run's description.
"$BUILD/bench/bench_gpu_kernels" --device-info >"$RUN/device.txt" 2>&1
if grep -q '^SKIPPED' "$RUN/device.txt"; then
  no_gpu "$(sed -n 's/^SKIPPED: no usable CUDA device (\(.*\))$/\1/p' "$RUN/device.txt")"
fi
nvidia-smi >"$RUN/nvidia-smi.txt" 2>&1 || true
GPU_NAME=$(sed -n 's/^device //p' "$RUN/device.txt")
{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "args=$ARGS"
  echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
  echo "gpu_name=$GPU_NAME"
  echo "driver_version=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)"
  echo "nvcc_version=$(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
  echo "cuda_arch=$CC"
  echo "torch_version=$TORCH_VERSION"
  echo "batch=$BATCH"
  echo "steps=$STEPS"
  echo "kernel_batch=$KBATCH"
  echo "torch_steps=$TORCH_STEPS"
  echo "torch_warmup=$TORCH_WARMUP"
  echo "n_layer=12"
  echo "d_model=768"
  echo "n_head=12"
  echo "d_ff=3072"
  echo "seq_len=1024"
  echo "vocab_size=50304"
  echo "archs=${ARCHS[*]}"
} >"$RUN/meta.env"
echo "device: $GPU_NAME (sm_$CC); PyTorch: $TORCH_VERSION"

# ---- 2. Correctness on this GPU.
if ((DO_TESTS)); then
  gpu_tests() {
    ctest --test-dir "$BUILD" -L gpu --output-on-failure --no-tests=error >"$RUN/tests.txt" 2>&1
    local rc=$?
    tail -3 "$RUN/tests.txt"
    return "$rc"
  }
  stage tests gpu_tests
fi
SAN=$(command -v compute-sanitizer)
for f in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  [[ -z $SAN && -x $f ]] && SAN=$f
done
sanitize() {
  local out="$RUN/sanitizer.tsv" suites=("${SAN_SUITES[@]}") rc=0
  : >"$out"
  if ((${#suites[@]} == 0)); then
    local f
    for f in "$BUILD"/tests/gpu_*; do [[ -f $f && -x $f ]] && suites+=("${f##*/}"); done
  fi
  # One line "tool<TAB>suite<TAB>status<TAB>seconds" per run, 6 at a time (CPU-bound under the tool), each
  # within SAN_TIMEOUT and the whole stage within SAN_BUDGET.
  run_one() {
    local tool=$1 suite=$2 t0 st limit
    t0=$(date +%s)
    limit=$((DEADLINE - t0 < SAN_TIMEOUT ? DEADLINE - t0 : SAN_TIMEOUT))
    if ((limit < 10)); then
      printf '%s\t%s\t%s\t0\n' "$tool" "$suite" "not run (stage time limit)"
      return 0
    fi
    OMP_NUM_THREADS=2 timeout "$limit" "$SAN" --tool "$tool" --error-exitcode 99 "$BUILD/tests/$suite" \
      >"$RUN/san_${tool}_$suite.log" 2>&1
    case $? in
      0) st=ok ;; 77) st=skipped ;; 124) st="timed out after ${limit}s (no error until then)" ;;
      99) st=ERRORS ;; *) st=FAILED ;;
    esac
    printf '%s\t%s\t%s\t%s\n' "$tool" "$suite" "$st" "$(($(date +%s) - t0))"
  }
  export -f run_one
  export SAN SAN_TIMEOUT BUILD RUN
  export DEADLINE=$(($(date +%s) + SAN_BUDGET))
  { for s in "${RACE_SUITES[@]}"; do echo "racecheck $s"; done
    for s in "${suites[@]}"; do echo "memcheck $s"; done; } |
    xargs -P 6 -L 1 bash -c 'run_one "$0" "$1"' >"$out"
  sort -o "$out" "$out"
  cat "$out"
  awk -F'\t' '$3 == "ERRORS" || $3 == "FAILED" { bad = 1 } END { exit !bad }' "$out" && rc=1
  return "$rc"
}
if ((DO_SAN)); then
  if [[ -n $SAN ]]; then
    stage sanitizer sanitize
  else
    echo "sanitizer_note=not run: compute-sanitizer not found" >>"$RUN/meta.env"
    echo "== sanitizer: compute-sanitizer not found, skipped"
  fi
fi

# ---- 3. Per-kernel benchmark.
if ((DO_KERNELS)); then
  kernels() {
    local kargs=(--batch "$KBATCH" --out "$RUN/kernels.md" --out "$RUN/kernels.csv")
    ((QUICK)) && kargs+=(--reps 10 --budget-ms 60)
    "$BUILD/bench/bench_gpu_kernels" "${kargs[@]}" >"$RUN/kernels.txt" 2>&1
    local rc=$?
    tail -3 "$RUN/kernels.txt"
    return "$rc"
  }
  stage kernels kernels
fi

# ---- 4. Our trainer on the CUDA backend.
if [[ ! -f data/tinyshakespeare/train_000000.bin ]]; then
  "$PY" data/prepare.py --input data/tinyshakespeare.txt --out-dir data/tinyshakespeare --tokenizer byte \
    >"$RUN/prepare.log" 2>&1 || { echo "bench/gpu.sh: data/prepare.py failed (see $RUN/prepare.log)" >&2; FAILED=1; }
fi
train_one() {
  local arch=$1 prec=$2 dir="$RUN/ours_$1_$2"
  # shellcheck disable=SC2086
  timeout "$TRAIN_TIMEOUT" "$BUILD/train" "${MODEL_SETS[@]}" ${ARCH_SETS[$arch]} --set train.device=cuda \
    --set train.precision="$prec" --set train.batch_size="$BATCH" --set train.max_steps="$STEPS" \
    --set optim.warmup_steps=5 --set train.eval_every=0 --set train.eval_batches=1 --set train.log_every=5 \
    --set checkpoint.every=0 --set checkpoint.keep=1 --set train.out_dir="$dir" >"$dir.log" 2>&1
  local rc=$?
  rm -rf "$dir/checkpoints"  # the final checkpoint (1.5 GB) is not what this measures
  grep -E 'model:|step +[0-9]+/' "$dir.log" | tail -3
  return "$rc"
}
if ((DO_TRAIN)); then
  for arch in "${ARCHS[@]}"; do
    if ((QUICK)) && [[ $arch != dense ]]; then
      continue  # --quick: dense bf16 only
    elif [[ " ${OURS_CUDA[*]} " == *" $arch "* ]]; then
      for prec in fp32 bf16; do
        ((QUICK)) && [[ $prec == fp32 ]] && continue
        stage "train_${arch}_$prec" train_one "$arch" "$prec"
      done
    else
      for prec in fp32 bf16; do
        echo "model.arch $arch is not on the CUDA backend yet (train.device=cuda trains dense only)" \
          >"$RUN/ours_${arch}_$prec.skip"
      done
    fi
  done
fi

# ---- 5. The same model in PyTorch on the same GPU.
torch_one() {  # arch mode dtype attention
  local arch=$1 mode=$2 dtype=$3 attn=$4 extra=()
  [[ $mode == compile ]] && extra+=(--compile)
  [[ $attn == sdpa ]] && extra+=(--attention sdpa)
  local out="$RUN/torch_${arch}_${mode}_${dtype}_${attn}.txt"
  # shellcheck disable=SC2086
  timeout "$TORCH_TIMEOUT" "$TORCH_PY" bench/torch_train.py --device cuda "${MODEL_TORCH[@]}" ${ARCH_TORCH[$arch]} \
    --batch-size "$BATCH" --steps "$TORCH_STEPS" --warmup "$TORCH_WARMUP" --dtype "$dtype" "${extra[@]}" \
    >"$out" 2>&1
  local rc=$?
  ((rc == 124)) && echo "timed out after ${TORCH_TIMEOUT}s" >>"$out"
  tail -1 "$out"
  return "$rc"
}
if ((DO_TORCH)); then
  if [[ -z $TORCH_PY ]]; then
    echo "== torch: skipped: no python here imports a torch that sees the GPU"
    printf 'torch\tskipped (no torch with CUDA)\t0\n' >>"$STAGES"
  else
    if ((QUICK)); then
      variants=("eager bfloat16 reference" "compile bfloat16 reference")
    else
      variants=("eager float32 reference" "compile float32 reference" "eager bfloat16 reference"
        "compile bfloat16 reference" "compile bfloat16 sdpa")
    fi
    for v in "${variants[@]}"; do
      read -r mode dtype attn <<<"$v"
      stage "torch_dense_${mode}_${dtype}_$attn" torch_one dense "$mode" "$dtype" "$attn"
    done
    if ((TORCH_MOE)); then
      for arch in "${ARCHS[@]}"; do
        [[ $arch == dense ]] || stage "torch_${arch}_eager_bfloat16_reference" torch_one "$arch" eager bfloat16 reference
      done
    fi
  fi
fi

# ---- 7 (run before the report, which lists its stage). Expert offloading in generation on this GPU.
if ((DO_OFFLOAD)); then
  offload() {
    BUILD=$BUILD DEVICE=cuda REPS=$((QUICK ? 1 : 3)) timeout 900 bench/offload.sh $((QUICK ? 100 : 300)) \
      >"$RUN/offload.txt" 2>&1
    local rc=$?
    tail -12 "$RUN/offload.txt"
    return "$rc"
  }
  stage offload offload
fi

# ---- 8. The ScMoE overlap on the device: one rank, a simulated link (a host function holds the
# communication stream as long as the link would), overlapped vs sequential, bf16.
if ((DO_OVERLAP)); then
  overlap_one() {
    local mode=$1 dir="$RUN/overlap_$1"
    # shellcheck disable=SC2086
    timeout "$TRAIN_TIMEOUT" "$BUILD/train" "${MODEL_SETS[@]}" ${ARCH_SETS[scmoe]} --set train.device=cuda \
      --set train.precision=bf16 --set train.batch_size="$BATCH" --set train.max_steps="$STEPS" \
      --set optim.warmup_steps=5 --set train.eval_every=0 --set train.eval_batches=1 --set train.log_every=5 \
      --set checkpoint.every=0 --set checkpoint.keep=1 --set comm.overlap="$mode" --set scmoe.expert_slot=auto \
      --set comm.simulate_link.bandwidth_gb_s="$LINK_GB_S" --set comm.simulate_link.latency_us=20 \
      --set train.out_dir="$dir" >"$dir.log" 2>&1
    local rc=$?
    rm -rf "$dir/checkpoints"
    grep -E 'expert_slot|step +[0-9]+/' "$dir.log" | tail -2
    return "$rc"
  }
  echo "link_gb_s=$LINK_GB_S" >>"$RUN/meta.env"
  stage overlap_true overlap_one true
  stage overlap_false overlap_one false
fi

# ---- 6. The report.
report_args=("$RUN" --warmup-steps "$WARM")
[[ -n $DOC ]] && report_args+=(--doc "$DOC")
"$PY" bench/gpu_report.py "${report_args[@]}" | tee "$RUN/report.md" || FAILED=1
echo "bench/gpu.sh: run directory $RUN${DOC:+; results written into $DOC}"
if ((FAILED)); then
  echo "bench/gpu.sh: some stages failed (see $STAGES)" >&2
  exit 1
fi
exit 0
