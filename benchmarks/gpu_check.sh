#!/usr/bin/env bash
# GPU check, for a lent CUDA machine with torch, torchvision, pytest and hypothesis already
# installed and no internet. From the repository root:
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh     # OUT defaults to ./gpu_out
#
# Builds cvops in place for the visible GPU only, then runs, each phase under its own timeout:
#   1. the CUDA tests (`pytest -k cuda`: the tests/ops/*_cuda.py files, marked `cuda`, and
#      every test parametrised over the cuda device), the torch.compile ones last
#   2. the other tests (three pytest processes side by side)
#   3. the copy bandwidth and the GPU benchmarks (`python -m cvops.bench --device cuda`), one
#      op family at a time
#   4. compute-sanitizer memcheck over a few small CUDA tests per op (SANITIZER=0 skips it)
# After each phase, benchmarks/gpu_summary.py appends its results to $OUT/summary.md, so a run
# cut short still says what it did; logs, junit XML and benchmark JSON are in $OUT too.
#
# The run is budgeted at BUDGET seconds (default 500: a lease holds 15 minutes, a machine
# starts in ~30 s, and a second, shorter run must still fit after it). Each phase gets its cap
# or the budget left after keeping back a minimum for the phases after it, whichever is less;
# a phase left under 15 s is skipped (status 125). So a slow phase squeezes the later ones, in
# this order of importance: build, CUDA tests, the other tests, benchmarks, compute-sanitizer.
# The build's cap is 300 s: on the first lease (H100, 16 cores, 2026-12-05) each compile job
# ran ~2.3x slower than on the 2-core development VM, so the longest CPU file alone
# (depthwise_conv2d_blocked.cpp, 87 s there) takes ~200 s; a 220 s cap cut that build.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
SANITIZER="${SANITIZER:-1}"
BUDGET="${BUDGET:-500}"
export PYTHONUNBUFFERED=1
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
# One architecture: nvcc has nothing to compile in parallel within a file.
export CVOPS_NVCC_THREADS="${CVOPS_NVCC_THREADS:-1}"

summary() { "$PY" benchmarks/gpu_summary.py --summary "$OUT/summary.md" "$@"; }

# allow CAP KEEP: the seconds a phase may run.
allow() {
  local left=$((BUDGET - SECONDS - $2))
  ((left > $1)) && left=$1
  echo "$left"
}

# limit SECONDS CMD...: SIGINT at the limit (pytest then still writes its junit XML), KILL
# 15 s later. Returns the command's status (124 or 137 when cut, 125 when not started).
limit() {
  local t=$1
  shift
  if ((t < 15)); then
    echo "skipped: the time budget (BUDGET=$BUDGET s) is spent" >&2
    return 125
  fi
  timeout -s INT -k 15 "$t" "$@"
}

# run_pytest NAME SECONDS PYTEST-ARGS...: log and junit XML to $OUT/NAME.{log,xml}; pytest's
# status, 0 also when nothing was selected (its 5).
run_pytest() {
  local name=$1 t=$2 rc
  shift 2
  limit "$t" "$PY" -m pytest -q -p no:cacheprovider -rfEs --durations=10 \
    --junitxml="$OUT/$name.xml" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  return $((rc == 5 ? 0 : rc))
}

: >"$OUT/summary.md"
summary device
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1

# ---- build, for this GPU's architecture only
echo "== build ($(date -u +%T))"
TORCH_CUDA_ARCH_LIST="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
if [[ -z $TORCH_CUDA_ARCH_LIST ]]; then
  echo "torch sees no GPU: nothing to check" | tee -a "$OUT/summary.md"
  exit 1
fi
export TORCH_CUDA_ARCH_LIST
start=$SECONDS
CVOPS_WITH_CUDA=1 limit "$(allow 300 210)" "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1
rc=$?
summary build --seconds $((SECONDS - start)) --rc "$rc" --log "$OUT/build.log"
if ((rc != 0)); then
  tail -30 "$OUT/build.log"
  exit 1
fi
"$PY" -m cvops.info >"$OUT/info.txt" 2>&1

# ---- 1. the CUDA tests
echo "== CUDA tests ($(date -u +%T))"
start=$SECONDS
# torch.compile tests last: each compiles for a while and checks tracing, not the kernels.
run_pytest cuda_tests "$(allow 150 160)" tests -k "cuda and not torch_compile"
cuda_rc=$?
run_pytest cuda_compile_tests "$(allow 60 140)" tests -k "cuda and torch_compile"
rc=$?
((cuda_rc == 0)) && cuda_rc=$rc
summary tests --title "CUDA tests (pytest -k cuda)" --out "$OUT" \
  --runs cuda_tests cuda_compile_tests --rc "$cuda_rc" --seconds $((SECONDS - start))

# ---- 2. the other tests, in three processes side by side (no pytest-xdist on that machine)
echo "== other tests ($(date -u +%T))"
start=$SECONDS
t=$(allow 180 120)
pids=()
for shard in ops models rest; do
  case $shard in
    ops) where=(tests/ops) ;;
    models) where=(tests/models) ;;
    rest) where=(tests --ignore=tests/ops --ignore=tests/models) ;;
  esac
  OMP_NUM_THREADS=$(($(nproc) / 3 + 1)) run_pytest "other_$shard" "$t" "${where[@]}" -k "not cuda" &
  pids+=($!)
done
other_rc=0
for pid in "${pids[@]}"; do
  wait "$pid" || other_rc=$?
done
summary tests --title "Other tests (pytest -k 'not cuda': tests/ops, tests/models, the rest)" \
  --out "$OUT" --runs other_ops other_models other_rest --rc "$other_rc" \
  --seconds $((SECONDS - start))

# ---- 3. copy bandwidth, then the GPU benchmarks one op family at a time
echo "== benchmarks ($(date -u +%T))"
summary bandwidth --device cuda --json "$OUT/copy_bandwidth.json"
bench_rc=0
for ops in losses roi_align roi_pool "nms batched_nms soft_nms nms_fixed" depthwise_conv2d \
  mobilenet_v2 "fasterrcnn_resnet50_fpn maskrcnn_resnet50_fpn"; do
  name="${ops%% *}"
  rm -rf "${OUT:?}/bench/$name"
  start=$SECONDS
  # shellcheck disable=SC2086  # $ops is a list of op names
  limit "$(allow 45 30)" "$PY" -m cvops.bench --device cuda --ops $ops --rounds 3 \
    --min-time 0.05 --warmup 3 --out "$OUT/bench/$name" >"$OUT/bench_$name.log" 2>&1
  rc=$?
  ((rc != 0)) && bench_rc=$rc
  summary bench --title "$ops" --json "$OUT/bench/$name/results-cuda.json" \
    --bandwidth "$OUT/copy_bandwidth.json" --log "$OUT/bench_$name.log" --rc "$rc" \
    --seconds $((SECONDS - start))
done

# ---- 4. compute-sanitizer memcheck over a few small CUDA tests per op (gpu_summary.py picks)
san_rc=0
SAN="$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")"
if [[ $SANITIZER != 0 && -x $SAN ]]; then
  echo "== compute-sanitizer ($(date -u +%T))"
  mapfile -t picked < <(summary pick-sanitizer-tests --junit "$OUT/cuda_tests.xml" | sed '/^$/d')
  printf '%s\n' "${picked[@]}" >"$OUT/sanitizer_tests.txt"
  start=$SECONDS
  if ((${#picked[@]} == 0)); then
    printf '## compute-sanitizer memcheck\n\nnot run: no CUDA test ran in phase 1\n\n' \
      >>"$OUT/summary.md"
  else
    # No caching allocator: memcheck then sees each tensor's own bounds.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 limit "$(allow 120 0)" "$SAN" --tool memcheck \
      --report-api-errors no --print-limit 100 "$PY" -m pytest -q -p no:cacheprovider \
      --junitxml="$OUT/sanitizer.xml" "${picked[@]}" >"$OUT/sanitizer.log" 2>&1
    san_rc=$?
    summary sanitizer --out "$OUT" --rc "$san_rc" --seconds $((SECONDS - start))
  fi
elif [[ $SANITIZER != 0 ]]; then
  printf '## compute-sanitizer memcheck\n\nnot run: no %s\n\n' "$SAN" >>"$OUT/summary.md"
fi

echo "done in ${SECONDS} s: cuda tests rc=$cuda_rc, other tests rc=$other_rc," \
  "benchmarks rc=$bench_rc, sanitizer rc=$san_rc" | tee -a "$OUT/summary.md"
exit $((cuda_rc != 0 || other_rc != 0 || bench_rc != 0 || san_rc != 0))
