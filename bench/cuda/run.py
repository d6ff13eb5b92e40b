#!/usr/bin/env python3
"""Runs xrec_cuda_bench and the PyTorch peer (torch_peer.py) on this GPU in one go and prints
the comparison: per case the median over repetitions of each side, the ratio, the rate in
TB/s and, for xrec, its fraction of the read bandwidth measured in the same process.

    python3 bench/cuda/run.py [--bench build/cuda/bench/cuda/xrec_cuda_bench] [--repeat 5]
                              [--filter REGEX] [--markdown FILE] [--json FILE]
"""
import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys


def run_xrec(bench, repeat, flt):
    cmd = [bench, "--benchmark_format=json", f"--benchmark_repetitions={repeat}",
           "--benchmark_report_aggregates_only=false"]
    if flt:
        cmd.append(f"--benchmark_filter={flt}")
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    per = {}
    for b in res["benchmarks"]:
        if b.get("run_type") != "iteration":
            continue
        ms = b["real_time"] * {"ms": 1.0, "us": 1e-3, "ns": 1e-6, "s": 1e3}[b["time_unit"]]
        name = re.sub(r"/min_time:[^/]*|/manual_time|/real_time", "", b["run_name"])
        per.setdefault(name, []).append((ms, b.get("TBps"), b.get("read_bw_TBps")))
    return res.get("context", {}), per


def run_peer(repeat, flt):
    per = {}
    for _ in range(repeat):
        out = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "torch_peer.py")],
                             check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            r = json.loads(line)
            if flt and not re.search(flt, r["name"]):
                continue
            per.setdefault(r["name"], []).append(r["ms"])
    return per


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default="build/cuda/bench/cuda/xrec_cuda_bench")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--peer-repeat", type=int, default=3)
    ap.add_argument("--filter", default="")
    ap.add_argument("--markdown")
    ap.add_argument("--json")
    a = ap.parse_args()
    ctx, xr = run_xrec(a.bench, a.repeat, a.filter)
    pr = run_peer(a.peer_repeat, a.filter)
    rows = []
    for name, runs in xr.items():
        ms = statistics.median(r[0] for r in runs)
        tb = statistics.median(r[1] for r in runs) if runs[0][1] is not None else None
        rbw = runs[0][2]
        pms = statistics.median(pr[name]) if name in pr else None
        rows.append({"case": name, "xrec_ms": ms, "xrec_ms_all": [r[0] for r in runs], "torch_ms": pms,
                     "torch_ms_all": pr.get(name), "speedup": (pms / ms) if pms else None, "xrec_TBps": tb,
                     "of_read_bw": (tb / rbw) if (tb and rbw) else None})
    hdr = "| case | xrec ms | PyTorch ms | PyTorch / xrec | xrec TB/s | of read bw |"
    lines = [hdr, "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        f = lambda v, p: "-" if v is None else f"{v:.{p}f}"
        lines.append(f"| {r['case']} | {f(r['xrec_ms'], 4)} | {f(r['torch_ms'], 4)} | {f(r['speedup'], 2)} | "
                     f"{f(r['xrec_TBps'], 3)} | {f(r['of_read_bw'], 3)} |")
    table = "\n".join(lines)
    print(table)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"context": ctx, "rows": rows}, fh, indent=1)
    if a.markdown:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        with open(a.markdown, "a") as fh:
            fh.write(f"\n### GPU: {gpu}, commit {commit or '?'}, {datetime.date.today()}\n\n")
            fh.write(f"`python3 bench/cuda/run.py --repeat {a.repeat} --peer-repeat {a.peer_repeat}"
                     + (f" --filter '{a.filter}'" if a.filter else "") + "`; medians of the repetitions "
                     "(xrec: Google Benchmark repetitions of event-timed calls; PyTorch: the median of "
                     "each process's 50 event-timed calls, then the median over processes).\n\n")
            fh.write(table + "\n")


if __name__ == "__main__":
    main()
