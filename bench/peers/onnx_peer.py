#!/usr/bin/env python3
"""ONNX Runtime peer of the serving benchmarks (bench/serve.cpp): the same DeepFM and DIN,
exported from PyTorch to ONNX with the same fp32 weights that xrec loads, scored by
onnxruntime.InferenceSession on one thread.

Two modes:

  onnx_peer.py --write-weights DIR
      Builds both PyTorch modules with a fixed seed, exports each to DIR/<model>.onnx
      (opset 17, dynamic batch axis), writes DIR/<model>.safetensors (xrec parameter
      names and shapes, "__metadata__" {"xrec_format_version": "1"}: io::load_checkpoint
      reads it as it is) and DIR/<model>_golden.safetensors (below), and prints the max
      abs difference between ONNX Runtime and PyTorch eager on the same inputs (it fails
      when that exceeds 1e-4). <model> is deepfm or din.

  onnx_peer.py [--weights-dir DIR] [--min-time S] [--repetitions N] [--warmup S] [CASES...]
      Times the cases (all six when none is named) on the models in DIR (written first
      into a temporary directory when --weights-dir is not given). bench/run.py passes
      xrec_bench's case names and --weights-dir.

Models (xrec's maths in inference; results differ by rounding only: xrec sums in other
orders and evaluates the FM term as sum_f <e_f, sum_{g<f} e_g>, here the square of sums):
  deepfm  include/xrec/models/deepfm.hpp on bench/deepfm.cpp's criteo layout: 26 sparse
          fields C1..C26, each its own table of 100,000 rows laid end to end (one global id
          space of 2.6M rows: field f's ids lie in [f 100000, (f + 1) 100000)), 13 dense
          fields; dim 16, DNN 400-400-400 with ReLU, bias-free output linear.
            logit = sum_f lin[id_f] + dense . w + b  +  sum_{i<j} <e_i, e_j>
                    + w_out . MLP([e_1; ..; e_26; dense])
          ONNX inputs:  ids int64 [b, 26] (global ids), dense float [b, 13]
          xrec tensors: deepfm.embedding [2600000, 16], deepfm.linear [2600000, 1],
                        deepfm.dense_linear.weight [1, 13], deepfm.dense_linear.bias [1],
                        deepfm.dnn.{0,1,2}.weight [400, 429|400|400], .bias [400],
                        deepfm.dnn_linear.weight [1, 400]
  din     include/xrec/models/din.hpp: tables user_id (100,000 rows), item_id (100,000),
          cate_id (1,000), end to end (offsets 0, 100000, 200000); dim 16; pairs
          (item_id, hist_item_id), (cate_id, hist_cate_id); attention unit 80-40 sigmoid,
          identity output, no softmax; tower 200-80 with Dice (running statistics, eps 1e-8).
            q = [e(item); e(cate)] [32],  k_j = [e(hist_item_j); e(hist_cate_j)] [32]
            s_j = unit([q, k_j, q - k_j, q * k_j]),  u = sum_{j < len} s_j k_j
            logit = tower([u; e(user); e(item); e(cate)])
          Histories are padded to 50; positions j >= hist_len are masked out (their ids
          are ignored, any valid id may stand there).
          ONNX inputs:  user_id, item_id, cate_id int64 [b] (global ids), hist_item and
                        hist_cate int64 [b, 50] (global ids, oldest first, padded),
                        hist_len int64 [b] (0..50)
          xrec tensors: din.embedding [201000, 16], din.attention.{0,1,out}.{weight,bias},
                        din.mlp.{0,1,out}.{weight,bias}, din.mlp.{0,1}.act.alpha [200|80],
                        din.mlp.{0,1}.act.running_mean / .running_var [1, 200|80]
  Both: output "logits" float [b, 1].

Weights (seed 0): embeddings and the first-order table N(0, 0.01); linear layers as
nn.Linear initialises them; Dice alphas U(-0.25, 0.5); Dice running statistics are the
mean and unbiased variance of the tower's pre-activations over 4096 random rows (one
training-mode pass with momentum 1), so they are far from the (0, 1) defaults.

Golden files, DIR/<model>_golden.safetensors: 8 rows of ONNX inputs under the input names
above, and "logits" float [8, 1], ONNX Runtime's output for them. din's golden rows have
history lengths 50, 50, 1, 17, 50, 3, 33, 49 (full and partial histories; the padding
past hist_len holds random ids, which must not matter).

Cases (xrec_bench's names; every one is a single session.run on inputs made beforehand):
  serve_deepfm_predict/b<N>   N rows of N different users (uniform ids per field, dense
                              uniform in [0, 1))
  serve_deepfm_rank/c<N>      one user's N candidates in one batch: fields C1..C13 and the
                              dense values repeated in every row, C14..C26 differ per row
                              (ONNX Runtime scores every row in full, so the split matters
                              only to the caches)
  serve_din_predict/b<N>      N rows of different users, full histories of 50
  serve_din_rank/c<N>         one user's N candidates: user_id, hist_item, hist_cate and
                              hist_len repeated in every row, item_id and cate_id per row

Session: intra_op_num_threads=1, inter_op_num_threads=1, ORT_ENABLE_ALL, ORT_SEQUENTIAL,
CPUExecutionProvider. Timing is torch_peer.py's time_case (warm-up, steps per sample
grown as Google Benchmark does, --repetitions samples; the median is reported). Output, as
torch_peer.py: one JSON line describing the peer, then one per case
{"case", "seconds_per_iter", "samples", "steps_per_sample", "threads"} or
{"case", "error"}.

Needs: torch, onnx, onnxruntime, safetensors, numpy (pip install onnxruntime onnx).
"""
import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

CASES = ["serve_deepfm_predict/b1", "serve_deepfm_predict/b256", "serve_deepfm_rank/c200",
         "serve_din_predict/b1", "serve_din_predict/b200", "serve_din_rank/c200"]

# The bench layouts (bench/deepfm.cpp's criteo_layout; the din layout of bench/serve.cpp).
DEEPFM_FIELDS, DEEPFM_ROWS, DEEPFM_DENSE, DIM = 26, 100_000, 13, 16
DEEPFM_USER_FIELDS = 22  # rank: fields [0, 22) and the dense values belong to the user
DIN_TABLES = {"user_id": 100_000, "item_id": 100_000, "cate_id": 1_000}
DIN_OFFSET = {"user_id": 0, "item_id": 100_000, "cate_id": 200_000}
DIN_ROWS = 201_000
DIN_MAX_LEN = 50
GOLDEN_ROWS = 8
DIN_GOLDEN_LENS = [50, 50, 1, 17, 50, 3, 33, 49]
OPSET = 17
TOLERANCE = 1e-4  # --write-weights fails when ONNX Runtime and PyTorch differ by more


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# Inputs (numpy; the same generator for the golden rows, the checks and the cases)
# ------------------------------------------------------------------------------------------
def deepfm_inputs(rng, rows, user_rows=None):
    """{"ids": int64 [rows, 26], "dense": float32 [rows, 13]}; with user_rows=True one user:
    the first DEEPFM_USER_FIELDS fields and the dense values equal in every row."""
    ids = rng.integers(0, DEEPFM_ROWS, size=(rows, DEEPFM_FIELDS), dtype=np.int64)
    dense = rng.random((rows, DEEPFM_DENSE), dtype=np.float32)
    if user_rows:
        ids[:, :DEEPFM_USER_FIELDS] = ids[0, :DEEPFM_USER_FIELDS]
        dense[:] = dense[0]
    ids += np.arange(DEEPFM_FIELDS, dtype=np.int64) * DEEPFM_ROWS  # global ids
    return {"ids": np.ascontiguousarray(ids), "dense": np.ascontiguousarray(dense)}


def din_inputs(rng, rows, lens=None, one_user=False):
    """The six din inputs for `rows` rows (global ids); lens: history lengths (default 50);
    one_user: the user's fields and history repeated, item and category per row."""
    def ids(table, shape):
        return rng.integers(0, DIN_TABLES[table], size=shape, dtype=np.int64) + DIN_OFFSET[table]

    d = {"user_id": ids("user_id", (rows,)), "item_id": ids("item_id", (rows,)),
         "cate_id": ids("cate_id", (rows,)), "hist_item": ids("item_id", (rows, DIN_MAX_LEN)),
         "hist_cate": ids("cate_id", (rows, DIN_MAX_LEN)),
         "hist_len": np.full(rows, DIN_MAX_LEN, dtype=np.int64) if lens is None
         else np.asarray(lens, dtype=np.int64)}
    if one_user:
        for k in ("user_id", "hist_item", "hist_cate", "hist_len"):
            d[k][:] = d[k][0]
    return {k: np.ascontiguousarray(v) for k, v in d.items()}


DEEPFM_INPUTS = ["ids", "dense"]
DIN_INPUTS = ["user_id", "item_id", "cate_id", "hist_item", "hist_cate", "hist_len"]


# ------------------------------------------------------------------------------------------
# PyTorch modules (imported lazily: the timing mode needs torch only for time_case)
# ------------------------------------------------------------------------------------------
def build_modules():
    import torch
    import torch.nn as nn

    class deepfm_net(nn.Module):
        """xrec models::deepfm on global ids; the FM term by the square-of-sum identity."""

        def __init__(self):
            super().__init__()
            n = DEEPFM_FIELDS * DEEPFM_ROWS
            self.embedding = nn.Embedding(n, DIM)
            self.linear = nn.Embedding(n, 1)
            with torch.no_grad():
                self.embedding.weight.normal_(0, 0.01)
                self.linear.weight.normal_(0, 0.01)
            self.dense_linear = nn.Linear(DEEPFM_DENSE, 1)
            widths = [DEEPFM_FIELDS * DIM + DEEPFM_DENSE, 400, 400, 400]
            self.dnn = nn.ModuleList(nn.Linear(widths[i], widths[i + 1]) for i in range(3))
            self.dnn_linear = nn.Linear(400, 1, bias=False)

        def forward(self, ids, dense):
            e = self.embedding(ids)  # [b, 26, 16]
            first = self.linear(ids).sum(1) + self.dense_linear(dense)  # [b, 1]
            s = e.sum(1)
            fm = 0.5 * (s * s - (e * e).sum(1)).sum(1, keepdim=True)
            h = torch.cat([e.flatten(1), dense], 1)
            for lin in self.dnn:
                h = torch.relu(lin(h))
            return first + fm + self.dnn_linear(h)

        def xrec_tensors(self):
            t = {"deepfm.embedding": self.embedding.weight, "deepfm.linear": self.linear.weight,
                 "deepfm.dense_linear.weight": self.dense_linear.weight,
                 "deepfm.dense_linear.bias": self.dense_linear.bias,
                 "deepfm.dnn_linear.weight": self.dnn_linear.weight}
            for i, lin in enumerate(self.dnn):
                t[f"deepfm.dnn.{i}.weight"] = lin.weight
                t[f"deepfm.dnn.{i}.bias"] = lin.bias
            return t

    class dice_act(nn.Module):
        """xrec layers::dice: p = sigmoid((x - mean) / sqrt(var + eps)),
        y = x (alpha + (1 - alpha) p); eval uses the running statistics. Training mode
        sets them from the batch with `momentum` (unbiased variance, as BatchNorm1d)."""

        def __init__(self, c, eps=1e-8):
            super().__init__()
            self.eps, self.momentum = eps, 0.1
            self.alpha = nn.Parameter(torch.empty(c).uniform_(-0.25, 0.5))
            self.register_buffer("running_mean", torch.zeros(c))
            self.register_buffer("running_var", torch.ones(c))

        def forward(self, x):
            if self.training:
                mean, var = x.mean(0), x.var(0, unbiased=False)
                with torch.no_grad():
                    m = self.momentum
                    self.running_mean.mul_(1 - m).add_(m * mean)
                    self.running_var.mul_(1 - m).add_(m * x.var(0, unbiased=True))
            else:
                mean, var = self.running_mean, self.running_var
            p = torch.sigmoid((x - mean) / torch.sqrt(var + self.eps))
            return x * (self.alpha + (1 - self.alpha) * p)

    class din_net(nn.Module):
        """xrec models::din on padded histories with a length mask (see the docstring)."""

        def __init__(self):
            super().__init__()
            w = 2 * DIM  # two pairs of width 16
            self.embedding = nn.Embedding(DIN_ROWS, DIM)
            with torch.no_grad():
                self.embedding.weight.normal_(0, 0.01)
            self.att = nn.ModuleDict({"0": nn.Linear(4 * w, 80), "1": nn.Linear(80, 40), "out": nn.Linear(40, 1)})
            self.mlp = nn.ModuleDict({"0": nn.Linear(w + 3 * DIM, 200), "1": nn.Linear(200, 80),
                                      "out": nn.Linear(80, 1)})
            self.dice = nn.ModuleList([dice_act(200), dice_act(80)])
            self.register_buffer("positions", torch.arange(DIN_MAX_LEN))

        def forward(self, user_id, item_id, cate_id, hist_item, hist_cate, hist_len):
            emb = self.embedding
            q = torch.cat([emb(item_id), emb(cate_id)], 1)  # [b, 32]
            k = torch.cat([emb(hist_item), emb(hist_cate)], 2)  # [b, 50, 32]
            qe = q.unsqueeze(1).expand_as(k)
            h = torch.sigmoid(self.att["0"](torch.cat([qe, k, qe - k, qe * k], 2)))
            h = torch.sigmoid(self.att["1"](h))
            s = self.att["out"](h)  # [b, 50, 1]
            # Padding is masked by a multiply (not a -inf fill: there is no softmax), so a
            # masked position adds exactly zero, as the jagged sum over real behaviours.
            mask = (self.positions.unsqueeze(0) < hist_len.unsqueeze(1)).to(s.dtype)
            u = torch.matmul((s.squeeze(2) * mask).unsqueeze(1), k).squeeze(1)  # [b, 32]
            x = torch.cat([u, emb(user_id), emb(item_id), emb(cate_id)], 1)
            for i in range(2):
                x = self.dice[i](self.mlp[str(i)](x))
            return self.mlp["out"](x)

        def xrec_tensors(self):
            t = {"din.embedding": self.embedding.weight}
            for part, mods in (("attention", self.att), ("mlp", self.mlp)):
                for k, lin in mods.items():
                    t[f"din.{part}.{k}.weight"] = lin.weight
                    t[f"din.{part}.{k}.bias"] = lin.bias
            for i, d in enumerate(self.dice):
                t[f"din.mlp.{i}.act.alpha"] = d.alpha
                t[f"din.mlp.{i}.act.running_mean"] = d.running_mean.reshape(1, -1)
                t[f"din.mlp.{i}.act.running_var"] = d.running_var.reshape(1, -1)
            return t

    torch.manual_seed(0)
    deepfm = deepfm_net().eval()
    din = din_net()
    # Dice statistics: one training-mode pass over random rows with momentum 1 sets each
    # layer's running mean and variance to those of its real pre-activations.
    rng = np.random.default_rng(1)
    calib = {k: torch.from_numpy(v) for k, v in din_inputs(rng, 4096).items()}
    with torch.no_grad():
        for d in din.dice:
            d.momentum = 1.0
        din.train()(*[calib[n] for n in DIN_INPUTS])
        for d in din.dice:
            d.momentum = 0.1
    din.eval()
    return torch, {"deepfm": (deepfm, DEEPFM_INPUTS), "din": (din, DIN_INPUTS)}


def make_session(path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def write_weights(out_dir):
    """Exports both models, their xrec checkpoints and golden files to out_dir; checks
    ONNX Runtime against PyTorch eager. Returns the largest difference seen."""
    from safetensors.numpy import save_file as save_np
    from safetensors.torch import save_file as save_torch

    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    torch, models = build_modules()
    worst = 0.0
    for name, (net, inputs) in models.items():
        rng = np.random.default_rng({"deepfm": 2, "din": 3}[name])
        if name == "deepfm":
            golden = deepfm_inputs(rng, GOLDEN_ROWS)
            checks = {"golden (8 rows)": golden, "predict 256 rows": deepfm_inputs(rng, 256),
                      "rank 200 candidates": deepfm_inputs(rng, 200, user_rows=True)}
        else:
            golden = din_inputs(rng, GOLDEN_ROWS, lens=DIN_GOLDEN_LENS)
            checks = {"golden (8 rows)": golden, "predict 200 rows": din_inputs(rng, 200),
                      "rank 200 candidates": din_inputs(rng, 200, one_user=True),
                      "200 rows, lengths 0..50": din_inputs(rng, 200, lens=rng.integers(0, DIN_MAX_LEN + 1, 200))}
        onnx_path = os.path.join(out_dir, f"{name}.onnx")
        example = tuple(torch.from_numpy(golden[n]) for n in inputs)
        # The TorchScript exporter (dynamo=False): unlike the torch.export one it needs no
        # onnxscript. torch has marked it deprecated since 2.9; the check below is what
        # vouches for the graphs it writes.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(net, example, onnx_path, input_names=inputs, output_names=["logits"],
                              dynamic_axes={**{n: {0: "batch"} for n in inputs}, "logits": {0: "batch"}},
                              opset_version=OPSET, do_constant_folding=True, dynamo=False)
        tensors = {k: v.detach().float().contiguous().clone() for k, v in net.xrec_tensors().items()}
        save_torch(tensors, os.path.join(out_dir, f"{name}.safetensors"), metadata={"xrec_format_version": "1"})

        sess = make_session(onnx_path)
        for label, feeds in checks.items():
            got = sess.run(["logits"], feeds)[0]
            with torch.no_grad():
                want = net(*[torch.from_numpy(feeds[n]) for n in inputs]).numpy()
            diff = float(np.max(np.abs(got - want)))
            worst = max(worst, diff)
            print(f"{name}: {label}: max |onnxruntime - torch eager| = {diff:.3g} "
                  f"(logits in [{want.min():.4f}, {want.max():.4f}])", flush=True)
            if label.startswith("golden"):
                save_np({**golden, "logits": np.ascontiguousarray(got.astype(np.float32))},
                        os.path.join(out_dir, f"{name}_golden.safetensors"))
    print(f"wrote {', '.join(sorted(os.listdir(out_dir)))} to {out_dir} in {time.perf_counter() - t0:.1f} s",
          flush=True)
    if worst > TOLERANCE:
        sys.exit(f"onnxruntime and torch eager differ by {worst:.3g} (> {TOLERANCE}): the export is wrong")
    return worst


# ------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------
def case_feeds(name):
    """(model, feeds) for a case name, or ValueError."""
    m = re.fullmatch(r"serve_(deepfm|din)_(predict|rank)/([bc])(\d+)", name)
    if not m or (m.group(2) == "predict") != (m.group(3) == "b"):
        raise ValueError(f"unknown case '{name}' (serve_<deepfm|din>_predict/b<N> or _rank/c<N>)")
    model, kind, n = m.group(1), m.group(2), int(m.group(4))
    if n < 1:
        raise ValueError(f"case '{name}': needs at least one row")
    rng = np.random.default_rng(11)
    if model == "deepfm":
        return model, deepfm_inputs(rng, n, user_rows=kind == "rank")
    return model, din_inputs(rng, n, one_user=kind == "rank")


def run_cases(a, weights_dir):
    import onnxruntime as ort
    from torch_peer import time_case  # one copy of the timing protocol (imports torch)

    print(json.dumps({"peer": "onnxruntime", "onnxruntime_version": ort.__version__, "threads": 1,
                      "providers": ["CPUExecutionProvider"], "graph_optimization": "ORT_ENABLE_ALL",
                      "opset": OPSET, "weights_dir": weights_dir}), flush=True)
    sessions = {}
    for name in a.cases or CASES:
        try:
            model, feeds = case_feeds(name)
        except ValueError as e:
            print(json.dumps({"case": name, "error": str(e)}), flush=True)
            continue
        if model not in sessions:
            path = os.path.join(weights_dir, f"{model}.onnx")
            if not os.path.exists(path):
                print(json.dumps({"case": name, "error": f"{path} not found (run --write-weights first)"}), flush=True)
                continue
            sessions[model] = make_session(path)
        sess = sessions[model]
        out = ["logits"]

        def step():
            return sess.run(out, feeds)

        samples, n = time_case(step, a.min_time, a.repetitions, a.warmup)
        print(json.dumps({"case": name, "seconds_per_iter": statistics.median(samples), "samples": samples,
                          "steps_per_sample": n, "threads": 1}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-weights", metavar="DIR", help="write the models, weights and golden files to DIR")
    ap.add_argument("--weights-dir", metavar="DIR", help="where --write-weights wrote them (default: write anew "
                    "into a temporary directory)")
    ap.add_argument("--threads", type=int, default=1, help="ignored: the serving cases run on one thread")
    ap.add_argument("--min-time", type=float, default=0.1, help="seconds per sample")
    ap.add_argument("--repetitions", type=int, default=5, help="samples per case")
    ap.add_argument("--warmup", type=float, default=0.05, help="warm-up seconds per case")
    ap.add_argument("cases", nargs="*", help="case names (xrec_bench's); default: all six")
    a = ap.parse_args()

    if a.write_weights:
        write_weights(a.write_weights)
        return 0
    if a.weights_dir:
        run_cases(a, a.weights_dir)
        return 0
    tmp = tempfile.mkdtemp(prefix="xrec_onnx_")
    try:
        # The export report goes to stderr: stdout carries the JSON lines only.
        stdout, sys.stdout = sys.stdout, sys.stderr
        try:
            write_weights(tmp)
        finally:
            sys.stdout = stdout
        run_cases(a, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
