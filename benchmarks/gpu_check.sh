#!/usr/bin/env bash
# GPU check: on a CUDA machine with torch (and torchvision, pytest, hypothesis) preinstalled
# and no internet, build cvops in place, run the whole test suite (CUDA tests included) and
# the GPU benchmarks. Everything lands under $OUT (default ./gpu_out).
#
#   bash benchmarks/gpu_check.sh            # from the repository root
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
PY="${PYTHON:-python3}"

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
echo "== build" && date
CVOPS_WITH_CUDA=1 "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1 \
  || { tail -50 "$OUT/build.log"; exit 1; }
"$PY" -m cvops.info | tee "$OUT/info.txt"

echo "== tests" && date
"$PY" -m pytest -q -p no:cacheprovider tests -rs > "$OUT/tests.log" 2>&1
tests_rc=$?
tail -5 "$OUT/tests.log"

echo "== benchmarks" && date
"$PY" -m cvops.bench --device cuda --rounds 3 --min-time 0.1 --warmup 3 --out "$OUT" 2>"$OUT/bench.err" \
  | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}
date
echo "tests rc=$tests_rc bench rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
