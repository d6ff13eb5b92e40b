#!/usr/bin/env bash
# The one device-machine command (issue 8): configure and build every CUDA target, run the
# CUDA tests, the tests again under compute-sanitizer memcheck, then the GPU benchmarks
# beside PyTorch. Logs go to $OUT. Called through the device tool from the repo root:
#   source cuda/device/setup.sh; bash cuda/device/run.sh [tests|bench|all] [extra ctest -R regex]
# (carry .device, made by cuda/device/pack.sh).
set -uo pipefail
what=${1:-all}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
t0=$(date +%s)
cmake --preset cuda -DCMAKE_CXX_COMPILER_LAUNCHER= -DCMAKE_CUDA_COMPILER_LAUNCHER= \
      -DCMAKE_CUDA_ARCHITECTURES=90 >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build build/cuda -j16 --target xrec_cuda_all >"$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -60; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
rc=0
if [ "$what" = tests ] || [ "$what" = all ]; then
    for t in build/cuda/cuda/tests/xrec_cuda_*; do
        [ -x "$t" ] || continue
        case "$t" in *headers*) continue;; esac
        echo "=== $(basename "$t")"
        "$t" >"$OUT/$(basename "$t").log" 2>&1; r=$?
        grep -E "^FAIL|passed|FAILED|seed" "$OUT/$(basename "$t").log" | head -40
        [ $r -ne 0 ] && rc=1
        echo "=== $(basename "$t") under compute-sanitizer memcheck"
        timeout 240 compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 9 "$t" >"$OUT/$(basename "$t").memcheck.log" 2>&1; r=$?
        tail -2 "$OUT/$(basename "$t").memcheck.log"
        [ $r -ne 0 ] && rc=1
    done
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
    python3 bench/cuda/run.py --bench build/cuda/bench/cuda/xrec_cuda_bench --repeat 5 --peer-repeat 3 \
        --json "$OUT/bench.json" --markdown "$OUT/RESULTS_gpu.md" ${BENCH_FILTER:+--filter "$BENCH_FILTER"} || rc=1
fi
echo "total: $(( $(date +%s) - t0 )) s, rc $rc"
exit $rc
