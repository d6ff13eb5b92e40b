#!/usr/bin/env python3
"""Runs xrec_bench and its PyTorch peer on the same cases and compares them.

Each of --repeat repetitions runs, as separate processes: ours (xrec_bench, Google
Benchmark JSON), the peer (bench/peers/torch_peer.py, JSON lines; bench/peers/onnx_peer.py,
ONNX Runtime, for the serve_* cases) -- in alternating order,
so that a drift in machine load hits both sides alike -- and then the machine limits
(xrec_bench's limit_* cases: FMA rate and the read bandwidth of a buffer of each case's
working-set size, at the case's thread count). Within a process a case is timed as
--samples samples of about --min-time seconds after a warm-up, and its time is the
median sample. Across repetitions the table reports, per case:

  ours, peer      median over repetitions of the per-step time
  peer/ours       median of the per-repetition ratios, and their min..max (the spread);
                  above 1 means ours is faster
  bound           what bounds the case on this machine: FMA (flops / FMA rate at the
                  case's threads) or mem (bytes / read bandwidth of a buffer the size of
                  the working set, at the case's threads), whichever takes longer
  ours %, peer %  that bound's time as a percentage of the measured time

Examples:
  python3 bench/run.py                           # every case, 5 repetitions
  python3 bench/run.py --filter 'mlp_.*b4096' --repeat 3
  python3 bench/run.py --filter '^topk_' --threads 1 --repeat 3   # top-K over 1M items (bench/top_k.cpp)
  python3 bench/run.py --filter '^sasrec' --threads 1 --repeat 3  # one user's SASRec request (bench/sasrec.cpp)
  python3 bench/run.py --threads 16 --markdown   # append a section to bench/RESULTS.md
  python3 bench/run.py --filter '^serve_' --threads 1 --repeat 3  # predict / rank beside ONNX Runtime

The serve_* cases (bench/serve.cpp) score the same deepfm and din on both sides with the
same fp32 weights: before the repetitions, `onnx_peer.py --write-weights DIR` writes the
ONNX models, the xrec checkpoints and the golden inputs once (DIR: --weights-dir, or a
temporary directory removed at exit), and every xrec_bench run gets XREC_SERVE_WEIGHTS=DIR.
"""
import argparse
import atexit
import datetime
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GIB = 1 << 30

# Google Benchmark appends its settings to a name; the case name is what precedes them.
SETTINGS = re.compile(r"/(min_time|min_warmup_time|repeats|iterations|real_time|manual_time|threads)(:[^/]*)?")


def base_name(name):
    return SETTINGS.sub("", name)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(cmd, **kw):
    log("  $", " ".join(shlex.quote(c) for c in cmd))
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-4000:]}")
    return p.stdout


def regex_alternation(names):
    # Names are [A-Za-z0-9_/x-]; escape the few characters std::regex would read.
    esc = [re.sub(r"([.^$|()\[\]{}*+?\\])", r"\\\1", n) for n in names]
    return "^(" + "|".join(esc) + ")(/|$)"


class ours_runner:
    def __init__(self, exe, a):
        self.exe = exe
        self.env = None  # xrec_bench's environment (None: this process's)
        self.flags = [f"--xrec_threads={a.threads}", f"--xrec_min_time={a.min_time}",
                      f"--xrec_repetitions={a.samples}", f"--xrec_warmup={a.warmup}"]
        self.context = {}

    def list(self):
        out = run([self.exe, "--benchmark_list_tests=true"] + self.flags, env=self.env)
        return [base_name(l.strip()) for l in out.splitlines() if l.strip()]

    def run(self, names):
        """{case: {"seconds": median sample, "counters": {...}}} for the given names."""
        out = run([self.exe, "--benchmark_format=json", "--benchmark_filter=" + regex_alternation(names)]
                  + self.flags, env=self.env)
        doc = json.loads(out)
        self.context = doc.get("context", {})
        scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
        samples, counters = {}, {}
        for b in doc["benchmarks"]:
            if b.get("run_type", "iteration") != "iteration" or b.get("error_occurred"):
                continue
            n = base_name(b["run_name"] if "run_name" in b else b["name"])
            samples.setdefault(n, []).append(b["real_time"] * scale[b["time_unit"]])
            counters[n] = b
        return {n: {"seconds": statistics.median(s), "counters": counters[n]} for n, s in samples.items()}


class peer_runner:
    def __init__(self, python, a, script="torch_peer.py", extra=()):
        self.cmd = [python, os.path.join(HERE, "peers", script), f"--threads={a.threads}",
                    f"--min-time={a.min_time}", f"--repetitions={a.samples}", f"--warmup={a.warmup}", *extra]
        self.head = {}

    def run(self, names):
        if not names:
            return {}
        out = run(self.cmd + list(names))
        res = {}
        for line in out.splitlines():
            if not line.startswith("{"):
                continue
            d = json.loads(line)
            if "peer" in d:
                self.head = d
            elif "error" in d:
                log(f"  peer: {d['case']}: {d['error']}")
            else:
                res[d["case"]] = {"seconds": d["seconds_per_iter"], "threads": d["threads"]}
        return res


def is_serve_case(name):
    """The serving cases (bench/serve.cpp): their peer is ONNX Runtime (onnx_peer.py)."""
    return name.startswith("serve_")


def serve_weights(a):
    """Writes the serving models and weights once (onnx_peer.py --write-weights) so that both
    sides score with the same fp32 weights; returns their folder."""
    d = a.weights_dir
    if not d:
        d = tempfile.mkdtemp(prefix="xrec_serve_weights_")
        atexit.register(shutil.rmtree, d, ignore_errors=True)  # ~380 MB; also on sys.exit
    d = os.path.abspath(d)
    log(f"writing the serving models and weights to {d}")
    out = run([a.python, os.path.join(HERE, "peers", "onnx_peer.py"), "--write-weights", d])
    for line in out.splitlines():
        log("  " + line)
    return d


def limit_names(all_names, cases_counters, threads):
    """The limit cases a run needs: FMA at 1 and N threads, 1 GiB read at 1 and N threads,
    and for each case the read bandwidth of its working set at its thread count (the
    registered size nearest to the case's ws_bytes). Returns (names, {case: limit name})."""
    fma = [n for n in all_names if n.startswith("limit_fma/")]
    bw = {}
    for n in all_names:
        m = re.fullmatch(r"limit_read_bw/(\d+)/t(\d+)", n)
        if m:
            bw[n] = (int(m.group(1)), int(m.group(2)))
    want = {n for n in fma if n in (f"limit_fma/t1", f"limit_fma/t{threads}")}
    want |= {n for n, (b, t) in bw.items() if b == GIB and t in (1, threads)}
    per_case = {}
    for case, c in cases_counters.items():
        if "ws_bytes" not in c:  # a case registered without a cost model (the gemm/ sweeps)
            continue
        ws, t = c["ws_bytes"], int(c.get("nthreads", 1))
        cands = [(abs(b - ws), n) for n, (b, tt) in bw.items() if tt == t]
        if cands:
            per_case[case] = min(cands)[1]
            want.add(per_case[case])
    return sorted(want), per_case


def fmt_time(s):
    if s is None:
        return "-"
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= f:
            return f"{s / f:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def fmt_bytes(b):
    for unit, f in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= f:
            return f"{b / f:.3g} {unit}"
    return f"{b:.0f} B"


def machine():
    info = {"model": "unknown", "cpus": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        kv = dict(l.split(":", 1) for l in out.splitlines() if ":" in l)
        kv = {k.strip(): v.strip() for k, v in kv.items()}
        info["model"] = kv.get("Model name", "unknown")
        info["cpus"] = kv.get("CPU(s)", info["cpus"])
        if "Core(s) per socket" in kv and "Socket(s)" in kv:
            info["cores"] = int(kv["Core(s) per socket"]) * int(kv["Socket(s)"])
        info["l2"] = kv.get("L2 cache", "")
        info["l3"] = kv.get("L3 cache", "")
    except (OSError, ValueError):
        pass
    return info


def git_commit():
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+local changes" if dirty else "")
    except OSError:
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="threads of *_train cases, both sides (default: CPUs available); "
                         "*_infer cases run on one thread")
    ap.add_argument("--repeat", type=int, default=5, help="repetitions, alternating ours and peer (default 5)")
    ap.add_argument("--filter", default="", help="regex (Python re.search) on case names")
    ap.add_argument("--samples", type=int, default=5, help="samples per case per repetition (default 5)")
    ap.add_argument("--min-time", type=float, default=0.1, help="seconds per sample (default 0.1)")
    ap.add_argument("--warmup", type=float, default=0.05, help="warm-up seconds per case (default 0.05)")
    ap.add_argument("--bench", default=os.path.join(ROOT, "build", "default", "bench", "xrec_bench"),
                    help="the xrec_bench binary (default build/default/bench/xrec_bench)")
    ap.add_argument("--python", default=sys.executable,
                    help="python with torch for the peers (and onnxruntime, onnx, safetensors for serve_*)")
    ap.add_argument("--no-peer", action="store_true", help="ours and the limits only")
    ap.add_argument("--weights-dir", metavar="DIR",
                    help="where the serve_* cases' models and weights are written (default: a temporary directory)")
    ap.add_argument("--markdown", nargs="?", const=os.path.join(HERE, "RESULTS.md"), default=None,
                    metavar="FILE", help="append a section with the table to FILE (default bench/RESULTS.md)")
    ap.add_argument("--json", metavar="FILE", help="also write every measurement to FILE")
    a = ap.parse_args()

    if not os.path.exists(a.bench):
        sys.exit(f"{a.bench} not found: build it with\n  cmake --preset default && "
                 "cmake --build --preset default --target xrec_bench")
    started = time.time()
    load_start = os.getloadavg()
    ours = ours_runner(a.bench, a)
    peer = peer_runner(a.python, a)
    all_names = ours.list()
    cases = [n for n in all_names if not n.startswith("limit_") and re.search(a.filter, n)]
    if not cases:
        sys.exit(f"no case matches --filter '{a.filter}'; cases: " +
                 ", ".join(n for n in all_names if not n.startswith("limit_")))
    log(f"{len(cases)} cases, {a.repeat} repetitions, {a.threads} threads")
    # serve_* cases go to the ONNX Runtime peer, the others to the PyTorch one.
    serve_cases = [c for c in cases if is_serve_case(c)]
    torch_cases = [c for c in cases if not is_serve_case(c)]
    onnx_peer = None
    if serve_cases:
        weights = serve_weights(a)
        ours.env = dict(os.environ, XREC_SERVE_WEIGHTS=weights)
        onnx_peer = peer_runner(a.python, a, "onnx_peer.py", [f"--weights-dir={weights}"])

    reps = []  # per repetition: {"ours": {...}, "peer": {...}, "limits": {...}}
    per_case_limit = {}
    for r in range(a.repeat):
        log(f"repetition {r + 1}/{a.repeat}")
        rep = {}
        order = ["ours", "peer"] if r % 2 == 0 else ["peer", "ours"]
        for side in order:
            if side == "ours":
                rep["ours"] = ours.run(cases)
            elif not a.no_peer:
                rep["peer"] = peer.run(torch_cases)
                if onnx_peer:
                    rep["peer"].update(onnx_peer.run(serve_cases))
        counters = {c: v["counters"] for c, v in rep["ours"].items()}
        names, per_case_limit = limit_names(all_names, counters, a.threads)
        rep["limits"] = ours.run(names)
        reps.append(rep)

    # Limits: rates per repetition, median over repetitions.
    def limit_rate(name, key):
        vals = [rp["limits"][name]["counters"][key] / rp["limits"][name]["seconds"]
                for rp in reps if name in rp["limits"]]
        return statistics.median(vals) if vals else None

    last_counters = {c: v["counters"] for c, v in reps[-1]["ours"].items()}
    rows = []
    for c in cases:
        o = [rp["ours"][c]["seconds"] for rp in reps if c in rp["ours"]]
        p = [rp["peer"][c]["seconds"] for rp in reps if c in rp.get("peer", {})]
        ratios = [rp["peer"][c]["seconds"] / rp["ours"][c]["seconds"]
                  for rp in reps if c in rp.get("peer", {}) and c in rp["ours"]]
        k = last_counters.get(c, {})
        thr = int(k.get("nthreads", 1))
        fma = limit_rate(f"limit_fma/t{thr}", "flops")
        bw_name = per_case_limit.get(c)
        bw = limit_rate(bw_name, "bytes") if bw_name else None
        t_flop = k.get("flops", 0) / fma if fma else 0
        t_mem = k.get("bytes", 0) / bw if bw else 0
        bound, t_bound = ("FMA", t_flop) if t_flop >= t_mem else ("mem", t_mem)
        om = statistics.median(o) if o else None
        pm = statistics.median(p) if p else None
        rows.append({
            "case": c, "threads": thr, "ours": om, "peer": pm,
            "ratio": statistics.median(ratios) if ratios else None,
            "ratio_min": min(ratios) if ratios else None, "ratio_max": max(ratios) if ratios else None,
            "bound": bound, "ws_bytes": k.get("ws_bytes", 0),
            "ours_frac": t_bound / om if om and t_bound else None,
            "peer_frac": t_bound / pm if pm and t_bound else None,
            "ours_all": o, "peer_all": p, "ratios": ratios,
        })

    limits = {}
    for t in sorted({1, a.threads}):
        fma, bw = limit_rate(f"limit_fma/t{t}", "flops"), limit_rate(f"limit_read_bw/{GIB}/t{t}", "bytes")
        limits[f"FMA fp32, {t} thread(s)"] = (fma * 1e-9 if fma else None, "GFLOP/s")
        limits[f"read 1 GiB, {t} thread(s)"] = (bw * 1e-9 if bw else None, "GB/s")

    def pct(x):
        return f"{100 * x:.0f}%" if x is not None else "-"

    def ratio_txt(row):
        if row["ratio"] is None:
            return "-", "-"
        return f"{row['ratio']:.2f}", f"{row['ratio_min']:.2f}..{row['ratio_max']:.2f}"

    header = ["case", "thr", "ours", "peer", "peer/ours", "spread", "bound (ws)", "ours %", "peer %"]
    table = []
    for row in rows:
        med, spread = ratio_txt(row)
        table.append([row["case"], str(row["threads"]), fmt_time(row["ours"]), fmt_time(row["peer"]), med,
                      spread, f"{row['bound']} ({fmt_bytes(row['ws_bytes'])})", pct(row["ours_frac"]),
                      pct(row["peer_frac"])])
    limit_lines = [f"{k}: {v:.1f} {u}" if v else f"{k}: -" for k, (v, u) in limits.items()]
    elapsed = time.time() - started
    load_end = os.getloadavg()
    load_txt = (f"load average (1/5/15 min) {load_start[0]:.1f}/{load_start[1]:.1f}/{load_start[2]:.1f} at the start, "
                f"{load_end[0]:.1f}/{load_end[1]:.1f}/{load_end[2]:.1f} at the end, on {os.cpu_count()} CPUs")

    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
    print("machine limits (median of repetitions): " + "; ".join(limit_lines))
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    print(f"({a.repeat} repetitions, {elapsed:.0f} s; {load_txt})")

    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rows": rows, "limits": limits, "ours_context": ours.context,
                       "peer": peer.head, "onnx_peer": onnx_peer.head if onnx_peer else {}}, f, indent=1)

    if a.markdown:
        m = machine()
        cmd = "python3 bench/run.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
        ctx = ours.context
        lines = [
            "",
            f"## {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} -- {m['model']}, "
            f"{m.get('cores', '?')} cores, {a.threads} thread{'s' if a.threads != 1 else ''}",
            "",
            f"- machine: {m['model']}, {m['cpus']} CPUs ({m.get('cores', '?')} cores), L2 {m.get('l2', '?')}, "
            f"L3 {m.get('l3', '?')}; {load_txt}",
            f"- commit: {git_commit()}",
            f"- command: `{cmd}` ({a.repeat} repetitions x {a.samples} samples x {a.min_time} s, "
            f"{elapsed / 60:.1f} min)",
            f"- ours: xsimd arch {ctx.get('xsimd_arch', '?')}; {ctx.get('linear_impl', '?')}; "
            f"{ctx.get('mlp_impl', '?')}; embedding_bag: {ctx.get('embedding_bag_impl', '?')}; "
            f"Google Benchmark library build: {ctx.get('library_build_type', '?')}",
        ]
        if peer.head:
            h = peer.head
            lines.append(f"- peer: torch {h.get('torch_version')}, BLAS {h.get('blas')} "
                         f"({h.get('blas_detail', '')}), CPU capability {h.get('cpu_capability', '?')}")
        if onnx_peer and onnx_peer.head:
            h = onnx_peer.head
            lines.append(f"- peer of the serve_* cases: onnxruntime {h.get('onnxruntime_version')}, "
                         f"{h.get('providers', ['?'])[0]}, 1 intra-op thread, {h.get('graph_optimization')}, "
                         f"opset {h.get('opset')}")
        lines.append("- machine limits, measured in this run: " + "; ".join(limit_lines))
        lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in table]
        with open(a.markdown, "a") as f:
            f.write("\n".join(lines) + "\n")
        log(f"appended to {a.markdown}")


if __name__ == "__main__":
    main()
