#!/usr/bin/env bash
# The performance issue's (issue 7) CPU figures on the device machine's 16-core CPU, in one
# call: builds xrec_bench there (Release, -march=native of that CPU; tests and examples off),
# then bench/run.py beside PyTorch 2.11 for the headline DeepFM at 1 and 16 threads, the
# training step's thread scaling (2, 4, 8), and the embedding_bag cases at 1 thread.
#   source cuda/device/setup.sh; bash cuda/device/cpu_bench.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}; rc=0
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cpus)"
t0=$(date +%s)
cmake -S . -B build/devcpu -DCMAKE_BUILD_TYPE=Release -DXREC_BUILD_TESTS=OFF -DXREC_BUILD_EXAMPLES=OFF \
      -DXREC_INSTALL=OFF >"$OUT/cpu_cfg.log" 2>&1 || { tail -20 "$OUT/cpu_cfg.log"; exit 1; }
cmake --build build/devcpu -j16 --target xrec_bench >"$OUT/cpu_build.log" 2>&1 || { grep -E "error" -A3 "$OUT/cpu_build.log" | head -30; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
B=build/devcpu/bench/xrec_bench
for t in 1 16; do
    python3 bench/run.py --bench $B --filter '^deepfm' --threads $t --repeat 3 \
        --json "$OUT/deepfm_t$t.json" --markdown "$OUT/RESULTS_cpu.md" 2>"$OUT/run_t$t.err" || rc=1
done
for t in 2 4 8; do
    python3 bench/run.py --bench $B --filter '^deepfm_train' --threads $t --repeat 3 \
        --json "$OUT/deepfm_t$t.json" --markdown "$OUT/RESULTS_cpu.md" 2>"$OUT/run_t$t.err" || rc=1
done
python3 bench/run.py --bench $B --filter '^embbag' --threads 1 --repeat 3 \
    --json "$OUT/embbag_t1.json" --markdown "$OUT/RESULTS_cpu.md" 2>"$OUT/run_embbag.err" || rc=1
cat "$OUT/RESULTS_cpu.md"
echo "total: $(( $(date +%s) - t0 )) s, rc $rc"
