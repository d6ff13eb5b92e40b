#!/usr/bin/env python3
"""PyTorch peer of bench/cuda/deepfm.cu on the same GPU: the Criteo-shaped DeepFM (26 sparse
fields of 100,000 rows, embedding 16, 13 dense, MLP 400-400-400, output 1) in eager PyTorch,
trained with SparseAdam on the tables and Adam on the dense parameters (the issue's
baseline setting). Two forms, both printed: "fields" as DeepCTR-Torch writes it (one
nn.Embedding per field for the second order and one of width 1 for the first order, sparse
gradients) and "one_table" (one embedding over the global id space with per-field offsets,
as xrec's model holds it: 2 lookups instead of 52). The faster is the peer to beat. Prints JSON lines with the same names as xrec_cuda_deepfm:
deepfm/train/b65536 (median step: forward, BCE, backward, both optimizer steps, loss.item()),
deepfm/infer/b4096 and deepfm/infer/b1 (no_grad forward, synchronised; p99 for b1); then
the one-table form again with torch.backends.cuda.matmul.allow_tf32 (names with _tf32).
"""
import json
import statistics
import time

import torch
import torch.nn as nn

F, ROWS, D, DENSE = 26, 100_000, 16, 13


class DeepFM(nn.Module):
    def __init__(self, one_table):
        super().__init__()
        self.one_table = one_table
        if one_table:
            self.emb = nn.Embedding(F * ROWS, D, sparse=True)
            self.lin = nn.Embedding(F * ROWS, 1, sparse=True)
            self.register_buffer("off", torch.arange(F) * ROWS)
        else:
            self.emb = nn.ModuleList(nn.Embedding(ROWS, D, sparse=True) for _ in range(F))
            self.lin = nn.ModuleList(nn.Embedding(ROWS, 1, sparse=True) for _ in range(F))
        self.dense_linear = nn.Linear(DENSE, 1)
        layers, width = [], F * D + DENSE
        for h in (400, 400, 400):
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.dnn = nn.Sequential(*layers)
        self.dnn_linear = nn.Linear(width, 1, bias=False)

    def forward(self, ids, dense):
        if self.one_table:
            g = ids + self.off
            e = self.emb(g)  # [B, F, D]
            lin = self.lin(g).sum(1) + self.dense_linear(dense)
        else:
            e = torch.stack([self.emb[f](ids[:, f]) for f in range(F)], 1)  # [B, F, D]
            lin = sum(self.lin[f](ids[:, f]) for f in range(F)) + self.dense_linear(dense)
        s = e.sum(1)
        fm = 0.5 * (s * s - (e * e).sum(1)).sum(1, keepdim=True)
        h = self.dnn(torch.cat([e.flatten(1), dense], 1))
        return lin + fm + self.dnn_linear(h)


def timed(fn, reps, warm):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return ts


def run(form, tf32=False):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    dev = torch.device("cuda")
    torch.manual_seed(0)
    m = DeepFM(form == "one_table").to(dev)
    sparse = [p for n, p in m.named_parameters() if n.startswith(("emb.", "lin."))]
    dense = [p for n, p in m.named_parameters() if not n.startswith(("emb.", "lin."))]
    o1, o2 = torch.optim.SparseAdam(sparse, lr=1e-3), torch.optim.Adam(dense, lr=1e-3)
    lossf = nn.BCEWithLogitsLoss()

    def batch(b):
        ids = torch.randint(0, ROWS, (b, F), device=dev)
        return ids, torch.rand(b, DENSE, device=dev), (torch.rand(b, 1, device=dev) < 0.25).float()

    bs = [batch(65536) for _ in range(4)]
    it = [0]

    def step():
        ids, x, y = bs[it[0] % 4]
        it[0] += 1
        o1.zero_grad(set_to_none=True)
        o2.zero_grad(set_to_none=True)
        loss = lossf(m(ids, x), y)
        loss.backward()
        o1.step()
        o2.step()
        return loss.item()

    ts = timed(step, 30, 5)
    med = statistics.median(ts)
    sfx = "_tf32" if tf32 else ""
    print(json.dumps({"name": f"deepfm/train{sfx}/b65536", "form": form, "ms": med * 1e3, "samples_per_s": 65536 / med}),
          flush=True)
    m.eval()
    for b in (4096,) if tf32 else (4096, 1):
        ids, x, _ = batch(b)
        with torch.no_grad():
            ts = timed(lambda: m(ids, x), 2000 if b == 1 else 200, 20)
        ts.sort()
        med = statistics.median(ts)
        print(json.dumps({"name": f"deepfm/infer{sfx}/b{b}", "form": form, "ms": med * 1e3, "samples_per_s": b / med,
                          "p99_us": ts[min(len(ts) - 1, int(0.99 * len(ts)))] * 1e6}), flush=True)


def main():
    for form in ("fields", "one_table"):
        run(form)
    run("one_table", tf32=True)  # TF32 tensor-core matmuls (allow_tf32), beside xrec's set_gemm_tf32


if __name__ == "__main__":
    main()
