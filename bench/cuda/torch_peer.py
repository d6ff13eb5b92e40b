#!/usr/bin/env python3
"""PyTorch peer of bench/cuda/bench.cu: the same cases on the same GPU, timed with CUDA
events (median of --repeat timed calls after warm-up), printed as JSON lines
{"name": ..., "ms": median, "TBps": ...}. Names match xrec_cuda_bench's cases.

embedding_bag_fwd: torch.nn.functional.embedding_bag(mode="sum", include_last_offset=True).
embedding_bag_adagrad: no row-wise Adagrad exists in PyTorch; the peer is the closest
PyTorch training step for a table: backward of embedding_bag with sparse=True (a coalesced
sparse gradient) and torch.optim.Adagrad's sparse update, timed without the forward.
device/read_bandwidth: x.sum() over 4 GiB; device/copy_bandwidth: a 2 GiB device copy.
"""
import argparse
import json
import math

import torch


def timed(fn, repeat, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def zipf_ids(u, rows):
    a = 0.05
    top = (rows + 1.0) ** (-a)
    x = (1 - u * (1 - top)) ** (-1 / a)
    r = torch.clamp(x.floor().to(torch.int64) - 1, 0, rows - 1)
    return (r * 2654435761) % rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--filter", default="")
    args = ap.parse_args()
    dev = torch.device("cuda")
    out = []

    def emit(name, ms, nbytes):
        if args.filter and args.filter not in name:
            return
        rec = {"name": name, "ms": ms, "TBps": nbytes / (ms * 1e-3) * 1e-12}
        print(json.dumps(rec), flush=True)
        out.append(rec)

    x = torch.ones((4 << 30) // 4, device=dev)
    emit("device/read_bandwidth", timed(lambda: x.sum(), args.repeat), 4 << 30)
    del x
    a = torch.ones((2 << 30) // 4, device=dev)
    b = torch.empty_like(a)
    emit("device/copy_bandwidth", timed(lambda: b.copy_(a), args.repeat), 2 * (2 << 30))
    del a, b

    rows, batch, per_bag = 10_000_000, 65536, 32
    g = torch.Generator(device=dev)
    g.manual_seed(42)
    for zipf in (False, True):
        u = torch.rand(batch * per_bag, device=dev, dtype=torch.float64, generator=g)
        ids = zipf_ids(u, rows) if zipf else torch.clamp((u * rows).to(torch.int64), 0, rows - 1)
        offsets = torch.arange(0, batch * per_bag + 1, per_bag, device=dev, dtype=torch.int64)
        for dim in (32, 64, 128):
            tail = f"/rows10M/D{dim}/ids32/b65536/{'zipf' if zipf else 'uniform'}"
            w = (torch.rand(rows, dim, device=dev, generator=g) - 0.5) * 0.01
            gathered = batch * per_bag * dim * 4
            f = lambda: torch.nn.functional.embedding_bag(ids, w, offsets, mode="sum", include_last_offset=True)
            emit("embedding_bag_fwd" + tail, timed(f, args.repeat), gathered)
            wp = torch.nn.Parameter(w)
            opt = torch.optim.Adagrad([wp], lr=0.01)
            gy = torch.rand(batch, dim, device=dev, generator=g) - 0.5
            y = torch.nn.functional.embedding_bag(ids, wp, offsets, mode="sum", include_last_offset=True, sparse=True)

            def step():
                opt.zero_grad(set_to_none=True)
                # backward of the saved forward graph (retain_graph: the forward is not timed)
                y.backward(gy, retain_graph=True)
                opt.step()

            emit("embedding_bag_adagrad" + tail, timed(step, max(10, args.repeat // 5)), gathered)
            del wp, opt, y, w
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
