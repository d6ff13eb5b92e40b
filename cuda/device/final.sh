#!/usr/bin/env bash
# The whole issue-8 measurement in one device call, from binaries built here with the `cuda`
# preset and carried in .devbin (saves the device the build): every CUDA test, the tests
# under compute-sanitizer memcheck (train_deepfm excepted: minutes under the sanitizer), the
# embedding-bag benchmark table beside PyTorch (bench/cuda/run.py), the headline DeepFM
# beside PyTorch, and train_deepfm at the headline shapes.
#   source cuda/device/setup.sh; bash cuda/device/final.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}; D=.devbin; rc=0
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
echo "=== train_deepfm --headline"
timeout 240 $D/xrec_cuda_train_deepfm --headline >"$OUT/train_headline.log" 2>&1 || rc=1
grep -E "^ok|^FAIL|AUC|epoch|passed|parameters|deepfm dim" "$OUT/train_headline.log" | tail -14
cd "$OUT" && tar czf logs.tgz *.log && rm -f *.log
echo "rc $rc"
