#!/usr/bin/env python3
"""Training parity for the collaborative-filtering models: xrec against a PyTorch peer that
starts from xrec's initial weights, is fed the same batches in the same order, and is
evaluated on the same candidates.

First run the xrec side with an export folder:
    build/eval/eval/rank_cf --seeds 5 --export /tmp/cf_export
which writes per (model, seed) the initial weights, every batch (users, items and the
sampled negatives / labels / log q) and xrec's HR@10 / NDCG@10 (and Recall@20 under full
ranking for mf and two_tower), and per seed the 99-negative candidates. Then:
    python3 eval/cf_parity.py --export /tmp/cf_export [--models mf,gmf,...] [--seeds 1,2,3,4,5]
                              [--dtype float32|float64]

The peer (tests/peers/cf_models.py) uses the same optimizers: torch.optim.Adam on the dense
weights and torch.optim.SparseAdam on the embedding tables (xrec's adam and lazy_adam, step
for step), the L2 of xrec's lazy_adam added to the touched rows' gradients, in float32 by
default. neumf_pre is replayed in full: the peer's own gmf and ncf_mlp (trained from their
logs) initialise its NeuMF (alpha 0.5), which is compared with xrec's exported NeuMF start,
then trained on neumf_pre's log. The issue's bar: HR@10 within 0.005 of xrec's.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "peers"))
import cf_models as cf  # noqa: E402

KINDS = {0: "bpr", 1: "bce", 2: "in_batch_softmax"}


def read_batches(path):
    """Yields (kind, epoch, users, items, third) from a cf_trainer batch log."""
    raw = np.fromfile(path, dtype=np.uint8)
    assert raw[:8].tobytes() == b"XRCFBAT1", f"{path}: not a batch log"
    pos = 8
    n = raw.size
    while pos < n:
        kind, epoch, rows = np.frombuffer(raw[pos:pos + 12].tobytes(), dtype=np.int32)
        pos += 12
        users = np.frombuffer(raw[pos:pos + 4 * rows].tobytes(), dtype=np.int32)
        pos += 4 * rows
        items = np.frombuffer(raw[pos:pos + 4 * rows].tobytes(), dtype=np.int32)
        pos += 4 * rows
        if kind == 0:
            third = np.frombuffer(raw[pos:pos + 4 * rows].tobytes(), dtype=np.int32)
            pos += 4 * rows
        elif kind == 1:
            third = np.frombuffer(raw[pos:pos + 4 * rows].tobytes(), dtype=np.float32)
            pos += 4 * rows
        else:
            third = np.frombuffer(raw[pos:pos + 8 * rows].tobytes(), dtype=np.float64)
            pos += 8 * rows
        yield int(kind), int(epoch), users, items, third


def load_split(folder):
    path = os.path.join(folder, "split.safetensors")
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}
    feats = {}
    for side in ("user", "item"):
        feats[side] = (t[f"{side}_feature_offsets"].long(), t[f"{side}_feature_values"].long(),
                       int(meta[f"{side}_feature_rows"]))
    return int(meta["n_users"]), int(meta["n_items"]), t["train_offsets"].long(), t["train_items"].long(), \
        t["test"].long(), feats


def build(model, init, n_users, n_items, feats, prefix):
    """The peer of `model`, sizes read from xrec's initial tensors."""
    if model == "mf":
        return cf.MF(n_users, n_items, dim=init[f"{prefix}.user"].shape[1], item_bias=f"{prefix}.item_bias" in init,
                     sparse=True)
    if model == "gmf":
        return cf.GMF(n_users, n_items, dim=init[f"{prefix}.user"].shape[1], sparse=True)
    if model == "ncf_mlp":
        hidden = [init[f"{prefix}.tower.{l}.weight"].shape[0] for l in range(8) if f"{prefix}.tower.{l}.weight" in init]
        return cf.NCFMLP(n_users, n_items, dim=init[f"{prefix}.user"].shape[1], hidden=hidden, sparse=True)
    if model in ("neumf", "neumf_pre"):
        hidden = [init[f"{prefix}.mlp.tower.{l}.weight"].shape[0] for l in range(8)
                  if f"{prefix}.mlp.tower.{l}.weight" in init]
        return cf.NeuMF(n_users, n_items, gmf_dim=init[f"{prefix}.gmf.user"].shape[1],
                        mlp_dim=init[f"{prefix}.mlp.user"].shape[1], hidden=hidden, sparse=True)
    if model == "two_tower":
        def tower(side):
            hidden = [init[f"{prefix}.{side}_tower.{l}.weight"].shape[0] for l in range(8)
                      if f"{prefix}.{side}_tower.{l}.weight" in init]
            out = init[f"{prefix}.{side}_tower.out.weight"].shape[0] if f"{prefix}.{side}_tower.out.weight" in init else 0
            return hidden, out
        (uh, uo), (ih, io) = tower("user"), tower("item")
        uf = feats["user"] if f"{prefix}.user_features" in init else None
        itf = feats["item"] if f"{prefix}.item_features" in init else None
        fd = init[f"{prefix}.user_features"].shape[1] if uf else 0
        return cf.TwoTower(n_users, n_items, id_dim=init[f"{prefix}.user"].shape[1], feature_dim=fd, user_hidden=uh,
                           user_out=uo, item_hidden=ih, item_out=io, user_features=uf, item_features=itf, sparse=True)
    raise ValueError(model)


def tables_of(m):
    return [mod.weight for mod in m.modules() if isinstance(mod, (torch.nn.Embedding, torch.nn.EmbeddingBag))]


def train(m, log_path, settings, dtype):
    tables = tables_of(m)
    ids = {id(p) for p in tables}
    dense = [p for p in m.parameters() if id(p) not in ids]
    opt_d = torch.optim.Adam(dense, lr=settings["dense_lr"]) if dense else None
    opt_s = torch.optim.SparseAdam(tables, lr=settings["sparse_lr"])
    l2 = settings.get("sparse_l2", 0.0)
    temp = settings.get("temperature", 1.0)
    steps = 0
    for kind, epoch, users, items, third in read_batches(log_path):
        u = torch.from_numpy(users.astype(np.int64))
        i = torch.from_numpy(items.astype(np.int64))
        if kind == 0:
            j = torch.from_numpy(third.astype(np.int64))
            loss = F.softplus(m(u, j) - m(u, i)).mean()
        elif kind == 1:
            y = torch.from_numpy(third.astype(np.float64)).to(dtype)
            loss = F.binary_cross_entropy_with_logits(m(u, i), y)
        else:
            lq = torch.from_numpy(third.copy()).to(dtype)
            loss = cf.in_batch_softmax(m.user_vectors(u), m.item_vectors(i), lq, temp, i)
        if opt_d:
            opt_d.zero_grad(set_to_none=True)
        opt_s.zero_grad(set_to_none=True)
        loss.backward()
        if l2 > 0:
            for p in tables:
                if p.grad is None:
                    continue
                g = p.grad.coalesce()
                rows = g.indices()[0]
                p.grad = torch.sparse_coo_tensor(g.indices(), g.values() + l2 * p.data[rows], p.shape,
                                                 check_invariants=False).coalesce()
        if opt_d:
            opt_d.step()
        opt_s.step()
        steps += 1
    return steps


@torch.no_grad()
def evaluate(m, cand_path, dtype):
    c = load_file(cand_path)
    users, items = c["users"].long(), c["items"].long()
    n, k = items.shape
    s = m(users.repeat_interleave(k), items.reshape(-1)).reshape(n, k).to(torch.float32)
    rank = (s[:, 1:] >= s[:, :1]).sum(1)  # ties against the target
    hit = rank < 10
    ndcg = torch.where(hit, 1.0 / torch.log2(rank.double() + 2), torch.zeros(n, dtype=torch.float64))
    return hit.double().mean().item(), ndcg.mean().item()


@torch.no_grad()
def recall_full(m, train_off, train_items, test, k=20):
    n_users = test.shape[0]
    users = torch.arange(n_users)
    U = m.user_vectors(users)
    V = m.item_vectors(torch.arange(m.item.num_embeddings))
    s = (U @ V.t()).to(torch.float32)
    hits, count = 0, 0
    for u in range(n_users):
        t = int(test[u])
        if t < 0:
            continue
        row = s[u].clone()
        hist = train_items[train_off[u]:train_off[u + 1]]
        target = row[t].item()
        row[hist] = -math.inf
        row[t] = -math.inf
        rank = int((row >= target).sum())
        hits += rank < k
        count += 1
    return hits / count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", required=True)
    ap.add_argument("--models", default="mf,gmf,ncf_mlp,neumf,neumf_pre,two_tower")
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    n_users, n_items, train_off, train_items, test, feats = load_split(a.export)
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        trained = {}
        for model in a.models.split(","):
            stem = os.path.join(a.export, f"{model}_s{seed}")
            if not os.path.exists(stem + ".json"):
                print(f"skip {model} seed {seed}: no export", file=sys.stderr)
                continue
            settings = json.load(open(stem + ".json"))
            init = load_file(stem + "_init.safetensors")
            prefix = "neumf" if model == "neumf_pre" else model
            t0 = time.time()
            torch.manual_seed(seed)
            m = build(model, init, n_users, n_items, feats, prefix).to(dtype)
            note = ""
            if model == "neumf_pre":
                for need in ("gmf", "ncf_mlp"):
                    if need not in trained:  # train the pretrained parts from their logs
                        s2 = os.path.join(a.export, f"{need}_s{seed}")
                        p = build(need, load_file(s2 + "_init.safetensors"), n_users, n_items, feats, need).to(dtype)
                        cf.load_xrec(p, load_file(s2 + "_init.safetensors"), need)
                        train(p, s2 + "_batches.bin", json.load(open(s2 + ".json")), dtype)
                        trained[need] = p
                m.init_from(trained["gmf"], trained["ncf_mlp"], 0.5)
                got = cf.to_xrec(m, prefix)
                part = lambda tag: max((got[k].double() - init[k].double()).abs().max().item() for k in got if tag in k)
                note = (f"start vs xrec's pretrained start: max |diff| gmf part {part('.gmf.'):.2e}, "
                        f"mlp part {part('.mlp.'):.2e}, output {part('.out.'):.2e}")
            else:
                cf.load_xrec(m, init, prefix)
            steps = train(m, stem + "_batches.bin", settings, dtype)
            trained[model] = m
            hr, ndcg = evaluate(m, os.path.join(a.export, f"candidates_s{seed}.safetensors"), dtype)
            rec = recall_full(m, train_off, train_items, test) if model in ("mf", "two_tower") else float("nan")
            row = dict(model=model, seed=seed, xrec_hr=settings["hr10"], peer_hr=hr, xrec_ndcg=settings["ndcg10"],
                       peer_ndcg=ndcg, xrec_rec=settings["recall20"], peer_rec=rec, steps=steps, sec=time.time() - t0)
            rows.append(row)
            print(f"{model:10s} seed {seed}: HR@10 xrec {row['xrec_hr']:.4f} peer {hr:.4f} (|d| {abs(hr - row['xrec_hr']):.4f})"
                  f"  NDCG@10 xrec {row['xrec_ndcg']:.4f} peer {ndcg:.4f}"
                  + (f"  Recall@20 xrec {row['xrec_rec']:.4f} peer {rec:.4f}" if not math.isnan(rec) else "")
                  + f"  [{steps} steps, {row['sec']:.0f}s] {note}", flush=True)
    print(f"\n{a.dtype} peers; | model | seeds | HR@10 xrec | HR@10 peer | max |d HR@10| | NDCG@10 xrec | NDCG@10 peer |")
    for model in a.models.split(","):
        rs = [r for r in rows if r["model"] == model]
        if not rs:
            continue
        f = lambda k: np.mean([r[k] for r in rs])
        worst = max(abs(r["peer_hr"] - r["xrec_hr"]) for r in rs)
        line = (f"| {model} | {len(rs)} | {f('xrec_hr'):.4f} | {f('peer_hr'):.4f} | {worst:.4f} | "
                f"{f('xrec_ndcg'):.4f} | {f('peer_ndcg'):.4f} |")
        if not math.isnan(rs[0]["peer_rec"]):
            line += f" Recall@20 xrec {f('xrec_rec'):.4f} peer {f('peer_rec'):.4f} max |d| " \
                    f"{max(abs(r['peer_rec'] - r['xrec_rec']) for r in rs):.4f}"
        print(line)


if __name__ == "__main__":
    main()
