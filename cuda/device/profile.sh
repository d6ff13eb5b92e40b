#!/usr/bin/env bash
# Per-kernel device times (Nsight Compute, gpu__time_duration) of a few iterations of one
# xrec_cuda_bench case: where the time of a multi-kernel step goes.
#   bash cuda/device/profile.sh BENCH 'CASE_REGEX' [launch-skip] [launch-count]
set -uo pipefail
bench=$1; case_re=$2; skip=${3:-60}; count=${4:-40}
OUT=${OUT:-/tmp/out}
XREC_BENCH_MIN_TIME=0.02 ncu --metrics gpu__time_duration.sum --csv --launch-skip "$skip" --launch-count "$count" \
    "$bench" --benchmark_filter="$case_re" >"$OUT/ncu.csv" 2>"$OUT/ncu.err"
python3 - "$OUT/ncu.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]; data = rows[1:]
ki, vi, ui = hdr.index("Kernel Name"), hdr.index("Metric Value"), hdr.index("Metric Unit")
tot = collections.OrderedDict(); cnt = collections.Counter()
for r in data:
    if r[vi] in ("", "Metric Value"): continue
    v = float(r[vi].replace(",", "")); u = r[ui]
    us = v / 1000 if u == "nsecond" else v if u == "usecond" else v * 1000
    name = r[ki][:90]
    tot[name] = tot.get(name, 0) + us; cnt[name] += 1
for n, t in tot.items(): print(f"{t / cnt[n]:9.1f} us x{cnt[n]:3d}  {n}")
PY
