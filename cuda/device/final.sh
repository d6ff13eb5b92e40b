#!/usr/bin/env bash
# The whole issue-8 measurement on the device machine, from binaries built here with the
# `cuda` preset and carried in .devbin (saves the device the build), in two calls that each
# fit the device's 10-minute limit:
#   main:      every CUDA test, the tests under compute-sanitizer memcheck (train_deepfm
#              excepted: minutes under the sanitizer), the embedding-bag benchmark table beside
#              PyTorch (bench/cuda/run.py), the headline DeepFM beside PyTorch (float and TF32)
#   headline:  train_deepfm --headline (the headline shapes trained on CPU and GPU)
#   source cuda/device/setup.sh; bash cuda/device/final.sh main|headline
set -uo pipefail
part=${1:-main}
OUT=${OUT:-/tmp/out}; D=.devbin; rc=0
if [ "$part" = main ]; then
    for t in smoke embedding_bag parity_kernels parity_layers train_deepfm; do
        echo "=== $t"; timeout 300 $D/xrec_cuda_$t >"$OUT/$t.log" 2>&1 || rc=1
        grep -E "^FAIL|passed|all passed|test AUC|seed" "$OUT/$t.log" | head -6
        [ "$t" = train_deepfm ] && continue
        timeout 240 compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 9 $D/xrec_cuda_$t \
            >"$OUT/$t.memcheck.log" 2>&1 || rc=1
        echo "  memcheck: $(grep -E 'ERROR SUMMARY' "$OUT/$t.memcheck.log")"
    done
    echo "=== embedding_bag benchmark"
    python3 bench/cuda/run.py --bench $D/xrec_cuda_bench --filter '^(device|embedding_bag)' --repeat 5 --peer-repeat 3 \
        --json "$OUT/bench.json" --markdown "$OUT/RESULTS_gpu.md" || rc=1
    echo "=== deepfm"
    $D/xrec_cuda_deepfm --steps 30 | tee "$OUT/deepfm.jsonl" || rc=1
    python3 bench/cuda/deepfm_torch.py | tee "$OUT/deepfm_torch.jsonl" || rc=1
else
    echo "=== train_deepfm --headline"
    timeout 560 $D/xrec_cuda_train_deepfm --headline >"$OUT/train_headline.log" 2>&1 || rc=1
    grep -E "^ok|^FAIL|AUC|epoch|passed|parameters|deepfm dim|shop" "$OUT/train_headline.log" | tail -16
fi
cd "$OUT" && tar czf "logs_$part.tgz" *.log && rm -f *.log
echo "rc $rc"
