#!/usr/bin/env python3
"""PyTorch peer of xrec_bench: the same cases, in eager PyTorch at its best, timed the
way xrec_bench times ours.

Case names are xrec_bench's (bench/run.py passes them):
  linear_fwd_infer/b<B>/<in>x<out>         nn.Linear forward under torch.inference_mode
  linear_fwdbwd_train/b<B>/<in>x<out>      grads set to None, forward, backward(ones);
                                           x requires grad (dx, dW, db), as in ours
  mlp_fwd_infer/b<B>/<d0-d1-...-1>         Linear+ReLU per hidden layer, final Linear
  mlp_fwdbwd_train/b<B>/<d0-...-1>         grads set to None, forward, backward(ones)
  embbag_fwd_infer/r<rows>/d<D>/bag<k>/b<B>     nn.EmbeddingBag(mode='sum'), uniform ids
  embbag_fwdbwd_train/r<rows>/d<D>/bag<k>/b<B>  same with sparse=True, backward(ones)
  fm_fwd_infer/b<B>/f<F>/d<D>              0.5*((v.sum(1))**2 - (v*v).sum(1)).sum(1)
  fwfm_fwd_infer/b<B>/f<F>/d<D>            (bmm(v, v^T) * R).sum((1, 2)), R the pair weights
                                           r placed in the strict upper triangle of [F, F]
  bi_interaction_fwd_infer/b<B>/f<F>/d<D>  0.5*((v.sum(1))**2 - (v*v).sum(1))
  cross_v2_fwd_infer/b<B>/d<d>/l<L>/full   x = x0 * lin_l(x) + x, nn.Linear(d, d) per layer
  cross_v2_fwd_infer/b<B>/d<d>/l<L>/r<r>   the same with Linear(d, r, bias=False), Linear(r, d)
  gru_fwd_infer/b<B>/t<T>/i<in>/h<H>       nn.GRU(in, H, batch_first=True) on [B, T, in]
  mha_fwd_infer/b<B>/t<T>/d<D>/h<heads>    nn.MultiheadAttention(D, heads, batch_first=True)
                                           self-attention, need_weights=False (eval mode:
                                           PyTorch's fused inference path)
  target_attention_fwd_infer/b<B>/t<T>/d<D>  DIN's unit: MLP(80-40, sigmoid, 1) over
                                           [q, k, q - k, q * k] per behaviour, pooled as
                                           bmm(weights^T, keys); every row T behaviours
  and their *_fwdbwd_train twins: grads set to None, forward, backward(ones); the input
  requires grad (dv, dx0, dx), as in ours
  topk_infer/n<n>/d<d>/k<k>                torch.topk(items @ q, k) (bench/peers/top_k_peer.py)
  topk_batch_infer/q<m>/n<n>/d<d>/k<k>     torch.topk(Q @ items.T, k, dim=1)
  sasrec_infer/n<n>/d<D>/t<T>/b<blocks>/h<heads>/len<L>/k<k>   one user's SASRec request:
                                           the forward over the last L items, then
                                           torch.topk(E @ h, k) (bench/peers/sasrec_peer.py)
  sasrec_fwd_infer/n<n>/d<D>/t<T>/b<blocks>/h<heads>/len<L>    the forward alone

Threads: *_infer cases run on 1 thread (xrec's infer_ctx runs on the calling thread),
*_train cases on --threads (xrec's train_ctx pool); torch.set_num_threads is set per case.

Timing, as in xrec_bench: warm-up for at least --warmup seconds and 2 steps; then the
steps per sample n are chosen so that a sample lasts about --min-time seconds (the first
run that does, growing n as Google Benchmark does); then --repetitions samples of n steps;
seconds_per_iter is the median of the samples' per-step times.

Prints one JSON line describing the peer (torch version, BLAS, threads), then one JSON
line per case: {"case", "seconds_per_iter", "samples", "steps_per_sample", "threads"}
or {"case", "error"} for a case it does not know.
"""
import argparse
import json
import math
import re
import statistics
import sys
import time

import torch
import torch.nn as nn

from top_k_peer import TOPK_KINDS, topk_case  # noqa: E402  (bench/peers/ is on sys.path: this script's folder)
from sasrec_peer import SASREC_KINDS, sasrec_case  # noqa: E402


def blas_info():
    """The BLAS PyTorch was built with, from torch.__config__.show()."""
    cfg = torch.__config__.show()
    info = {}
    m = re.search(r"BLAS_INFO=([^,\s]+)", cfg)
    info["blas"] = m.group(1) if m else "unknown"
    for line in cfg.splitlines():
        line = line.strip(" -")
        if "Math Kernel Library" in line or "OpenBLAS" in line or "BLIS" in line:
            info["blas_detail"] = line
        if line.startswith("Intel(R) MKL-DNN") or line.startswith("oneDNN"):
            info["onednn"] = line
        if line.startswith("CPU capability usage"):
            info["cpu_capability"] = line.split(":", 1)[1].strip()
    return info


def mlp(dims):
    layers = []
    for i in range(1, len(dims)):
        layers.append(nn.Linear(dims[i - 1], dims[i]))
        if i + 1 < len(dims):
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def make_case(name, train_threads):
    """Returns (step, threads, context manager factory) for a case name, or raises."""
    kind, _, args = name.partition("/")
    train = kind.endswith("_train")
    threads = train_threads if train else 1
    torch.manual_seed(0)

    if kind in ("linear_fwd_infer", "linear_fwdbwd_train"):
        m = re.fullmatch(r"b(\d+)/(\d+)x(\d+)", args)
        if not m:
            raise ValueError(f"bad linear case arguments '{args}'")
        b, fin, fout = map(int, m.groups())
        lin = nn.Linear(fin, fout)
        x = torch.randn(b, fin)
        if not train:
            lin.requires_grad_(False)

            def step():
                return lin(x)

            return step, threads, True
        x.requires_grad_(True)
        params = list(lin.parameters())
        ones = torch.ones(b, fout)

        def step():
            for p in params:
                p.grad = None
            x.grad = None
            lin(x).backward(ones)

        return step, threads, False

    if kind in ("mlp_fwd_infer", "mlp_fwdbwd_train"):
        m = re.fullmatch(r"b(\d+)/(\d+(?:-\d+)+)", args)
        if not m:
            raise ValueError(f"bad mlp case arguments '{args}'")
        b = int(m.group(1))
        dims = [int(v) for v in m.group(2).split("-")]
        net = mlp(dims)
        x = torch.randn(b, dims[0])
        if not train:
            net.requires_grad_(False)

            def step():
                return net(x)

            return step, threads, True
        params = list(net.parameters())
        ones = torch.ones(b, dims[-1])

        def step():
            for p in params:
                p.grad = None
            net(x).backward(ones)

        return step, threads, False

    if kind in ("embbag_fwd_infer", "embbag_fwdbwd_train"):
        m = re.fullmatch(r"r(\d+)/d(\d+)/bag(\d+)/b(\d+)", args)
        if not m:
            raise ValueError(f"bad embbag case arguments '{args}'")
        rows, dim, bag, b = map(int, m.groups())
        emb = nn.EmbeddingBag(rows, dim, mode="sum", sparse=train, include_last_offset=True)
        with torch.no_grad():
            emb.weight.uniform_(-0.05, 0.05)
        ids = torch.randint(0, rows, (b * bag,), dtype=torch.int64)
        offsets = torch.arange(0, b * bag + 1, bag, dtype=torch.int64)
        if not train:
            emb.requires_grad_(False)

            def step():
                return emb(ids, offsets)

            return step, threads, True
        ones = torch.ones(b, dim)

        def step():
            emb.weight.grad = None
            emb(ids, offsets).backward(ones)

        return step, threads, False

    if kind in INTERACTION_KINDS:
        return interaction_case(kind, args, train, threads)

    if kind in TOPK_KINDS:
        return topk_case(kind, args, threads)

    if kind in SASREC_KINDS:
        return sasrec_case(kind, args, threads)

    if kind in ("deepfm_infer", "deepfm_train"):
        return deepfm_case(kind, args, threads)

    raise ValueError(f"unknown case kind '{kind}'")


# Feature-interaction and sequence layers: each builds (module or None, input tensor,
# forward function of the input). Forward (infer) cases run the function under
# inference_mode; train cases zero the gradients, run it and backward(ones) into the input
# (which requires grad) and every parameter.

def fm_fwd(v):
    s = v.sum(1)
    return 0.5 * (s * s - (v * v).sum(1)).sum(1)


def bi_interaction_fwd(v):
    s = v.sum(1)
    return 0.5 * (s * s - (v * v).sum(1))


class fwfm_module(nn.Module):
    """Pair weights r [F(F-1)/2] (torch.triu_indices order) scattered into the strict upper
    triangle of an [F, F] matrix R; y = sum_ij (v v^T)_ij R_ij, v v^T by one bmm."""

    def __init__(self, fields):
        super().__init__()
        self.fields = fields
        self.r = nn.Parameter(torch.empty(fields * (fields - 1) // 2).uniform_(-1, 1))
        self.register_buffer("iu", torch.triu_indices(fields, fields, 1))

    def forward(self, v):
        R = torch.zeros(self.fields, self.fields, dtype=v.dtype).index_put((self.iu[0], self.iu[1]), self.r)
        return (torch.bmm(v, v.transpose(1, 2)) * R).sum((1, 2))


class cross_v2_module(nn.Module):
    """DCN-V2 cross network: x_{l+1} = x0 * W_l(x_l) + x_l, W_l an nn.Linear(d, d) (full
    rank) or Linear(d, r, bias=False) then Linear(r, d) (low rank)."""

    def __init__(self, d, layers, rank):
        super().__init__()
        if rank == 0:
            self.w = nn.ModuleList(nn.Linear(d, d) for _ in range(layers))
        else:
            self.w = nn.ModuleList(nn.Sequential(nn.Linear(d, rank, bias=False), nn.Linear(rank, d))
                                   for _ in range(layers))

    def forward(self, x0):
        x = x0
        for w in self.w:
            x = x0 * w(x) + x
        return x


class gru_module(nn.Module):
    def __init__(self, fin, hidden):
        super().__init__()
        self.gru = nn.GRU(fin, hidden, batch_first=True)

    def forward(self, x):
        return self.gru(x)[0]


def interaction_layer(kind, args):
    base = kind.rsplit("_fwd", 1)[0]
    if base in ("fm", "fwfm", "bi_interaction"):
        m = re.fullmatch(r"b(\d+)/f(\d+)/d(\d+)", args)
        if not m:
            raise ValueError(f"bad {base} case arguments '{args}'")
        b, f, d = map(int, m.groups())
        x = torch.randn(b, f, d)
        if base == "fm":
            return None, x, fm_fwd
        if base == "bi_interaction":
            return None, x, bi_interaction_fwd
        mod = fwfm_module(f)
        return mod, x, mod
    if base == "cross_v2":
        m = re.fullmatch(r"b(\d+)/d(\d+)/l(\d+)/(full|r\d+)", args)
        if not m:
            raise ValueError(f"bad cross_v2 case arguments '{args}'")
        b, d, layers = map(int, m.groups()[:3])
        rank = 0 if m.group(4) == "full" else int(m.group(4)[1:])
        mod = cross_v2_module(d, layers, rank)
        return mod, torch.randn(b, d), mod
    if base == "gru":
        m = re.fullmatch(r"b(\d+)/t(\d+)/i(\d+)/h(\d+)", args)
        if not m:
            raise ValueError(f"bad gru case arguments '{args}'")
        b, t, fin, hidden = map(int, m.groups())
        mod = gru_module(fin, hidden)
        return mod, torch.randn(b, t, fin), mod
    if base == "mha":
        m = re.fullmatch(r"b(\d+)/t(\d+)/d(\d+)/h(\d+)", args)
        if not m:
            raise ValueError(f"bad mha case arguments '{args}'")
        b, t, d, heads = map(int, m.groups())
        mod = mha_module(d, heads)
        return mod, torch.randn(b, t, d), mod
    if base == "target_attention":
        m = re.fullmatch(r"b(\d+)/t(\d+)/d(\d+)", args)
        if not m:
            raise ValueError(f"bad target_attention case arguments '{args}'")
        b, t, d = map(int, m.groups())
        mod = target_attention_module(d, t)
        # One tensor holds the candidate and its behaviours: [B, 1 + T, D].
        return mod, torch.randn(b, 1 + t, d), mod
    raise ValueError(f"unknown case kind '{kind}'")


class mha_module(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.mha = nn.MultiheadAttention(d, heads, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


class target_attention_module(nn.Module):
    """DIN's local activation unit: s_j = MLP([q, k_j, q - k_j, q * k_j]) with hidden
    layers 80 and 40 and sigmoid activations, a linear score, no softmax; pooled =
    sum_j s_j k_j. Input [B, 1 + T, D]: the candidate, then its T behaviours."""

    def __init__(self, d, t, hidden=(80, 40)):
        super().__init__()
        layers, w = [], 4 * d
        for h in hidden:
            layers += [nn.Linear(w, h), nn.Sigmoid()]
            w = h
        layers.append(nn.Linear(w, 1))
        self.unit = nn.Sequential(*layers)
        self.t = t

    def forward(self, x):
        q, k = x[:, :1, :], x[:, 1:, :]
        qe = q.expand(-1, self.t, -1)
        s = self.unit(torch.cat([qe, k, qe - k, qe * k], dim=-1))  # [B, T, 1]
        return torch.bmm(s.transpose(1, 2), k).squeeze(1)


INTERACTION_KINDS = {f"{k}_{s}" for k in ("fm", "fwfm", "bi_interaction", "cross_v2", "gru", "mha",
                                           "target_attention")
                     for s in ("fwd_infer", "fwdbwd_train")}


def interaction_case(kind, args, train, threads):
    mod, x, fwd = interaction_layer(kind, args)
    if not train:
        if mod is not None:
            mod.requires_grad_(False)
            mod.eval()  # nn.MultiheadAttention's fused inference path needs eval mode

        def step():
            return fwd(x)

        return step, threads, True
    x.requires_grad_(True)
    params = list(mod.parameters()) if mod is not None else []
    ones = torch.ones_like(fwd(x))

    def step():
        for p in params:
            p.grad = None
        x.grad = None
        fwd(x).backward(ones)

    return step, threads, False


# The performance issue's headline DeepFM (bench/deepfm.cpp): 26 fields of 100,000 rows, one
# embedding table over the global ids (offsets per field), embedding 16, 13 dense, MLP
# 400-400-400, output 1. Inference: forward under inference_mode; training: zero_grad,
# forward, BCE with logits, backward, SparseAdam on the tables and Adam on the rest.
DEEPFM_F, DEEPFM_ROWS, DEEPFM_D, DEEPFM_DENSE = 26, 100_000, 16, 13


class deepfm_module(nn.Module):
    def __init__(self):
        super().__init__()
        F, R, D = DEEPFM_F, DEEPFM_ROWS, DEEPFM_D
        self.emb = nn.Embedding(F * R, D, sparse=True)
        self.lin = nn.Embedding(F * R, 1, sparse=True)
        with torch.no_grad():
            self.emb.weight.normal_(0, 0.01)
        self.register_buffer("off", torch.arange(F) * R)
        self.dense_linear = nn.Linear(DEEPFM_DENSE, 1)
        self.dnn = mlp([F * D + DEEPFM_DENSE, 400, 400, 400])
        self.dnn_act = nn.ReLU()
        self.dnn_linear = nn.Linear(400, 1, bias=False)

    def forward(self, ids, dense):
        g = ids + self.off
        e = self.emb(g)
        first = self.lin(g).sum(1) + self.dense_linear(dense)
        s = e.sum(1)
        fm = 0.5 * (s * s - (e * e).sum(1)).sum(1, keepdim=True)
        h = self.dnn_act(self.dnn(torch.cat([e.flatten(1), dense], 1)))
        return first + fm + self.dnn_linear(h)


def deepfm_case(kind, args, threads):
    m = re.fullmatch(r"b(\d+)", args)
    if not m:
        raise ValueError(f"bad deepfm case arguments '{args}'")
    b = int(m.group(1))
    net = deepfm_module()

    def batch():
        return (torch.randint(0, DEEPFM_ROWS, (b, DEEPFM_F)), torch.rand(b, DEEPFM_DENSE),
                (torch.rand(b, 1) < 0.25).float())

    if kind == "deepfm_infer":
        net.requires_grad_(False)
        ids, x, _ = batch()

        def step():
            return net(ids, x)

        return step, threads, True
    sparse = [net.emb.weight, net.lin.weight]
    dense = [p for n, p in net.named_parameters() if not n.startswith(("emb.", "lin."))]
    o1, o2 = torch.optim.SparseAdam(sparse, lr=1e-3), torch.optim.Adam(dense, lr=1e-3)
    lossf = nn.BCEWithLogitsLoss()
    bs = [batch() for _ in range(4)]
    it = [0]

    def step():
        ids, x, y = bs[it[0] % 4]
        it[0] += 1
        o1.zero_grad(set_to_none=True)
        o2.zero_grad(set_to_none=True)
        loss = lossf(net(ids, x), y)
        loss.backward()
        o1.step()
        o2.step()
        return loss.item()

    return step, threads, False


def time_case(step, min_time, repetitions, warmup):
    """Warm-up, choose steps per sample, take samples; returns per-step times and n."""
    t0 = time.perf_counter()
    i = 0
    while i < 2 or time.perf_counter() - t0 < warmup:
        step()
        i += 1
    # Grow n until one run lasts min_time, by Google Benchmark's rule: x10 while a run is
    # under a tenth of min_time, else aim at 1.4 min_time.
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        t = time.perf_counter() - t0
        if t >= min_time:
            break
        mult = 1.4 * min_time / max(t, 1e-9) if t / min_time > 0.1 else 10.0
        n = max(n + 1, int(math.ceil(n * mult)))
    samples = []
    for _ in range(repetitions):
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        samples.append((time.perf_counter() - t0) / n)
    return samples, n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="threads of *_train cases (infer cases use 1)")
    ap.add_argument("--min-time", type=float, default=0.1, help="seconds per sample")
    ap.add_argument("--repetitions", type=int, default=5, help="samples per case")
    ap.add_argument("--warmup", type=float, default=0.05, help="warm-up seconds per case")
    ap.add_argument("cases", nargs="*", help="case names (xrec_bench's)")
    a = ap.parse_args()

    head = {"peer": "torch", "torch_version": torch.__version__, "threads": a.threads,
            "mkldnn": torch.backends.mkldnn.is_available()}
    head.update(blas_info())
    print(json.dumps(head), flush=True)

    for name in a.cases:
        try:
            step, threads, infer = make_case(name, a.threads)
        except ValueError as e:
            print(json.dumps({"case": name, "error": str(e)}), flush=True)
            continue
        torch.set_num_threads(threads)
        if infer:
            with torch.inference_mode():
                samples, n = time_case(step, a.min_time, a.repetitions, a.warmup)
        else:
            samples, n = time_case(step, a.min_time, a.repetitions, a.warmup)
        print(json.dumps({"case": name, "seconds_per_iter": statistics.median(samples), "samples": samples,
                          "steps_per_sample": n, "threads": threads}), flush=True)
        del step


if __name__ == "__main__":
    sys.exit(main())
