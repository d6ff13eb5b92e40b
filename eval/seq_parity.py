#!/usr/bin/env python3
"""Training parity of xrec's sequential recommenders with their PyTorch peers
(tests/peers/seqrec_models.py).

Run xrec first with --export DIR (eval/rank_seq.cpp): it writes DIR/init.safetensors (its
initial weights), DIR/batches.bin (every training batch in order, train/seq_trainer.hpp's
format) and DIR/config.txt. This script builds the peer, loads the same initial weights,
replays the same batches with torch.optim.Adam at the same settings (float32), and evaluates
with rank_seq's protocol:
  - beauty / toys: last item = test, full ranking over all items, history (every earlier
    item but the target itself) masked, ties against the target: HR@10, NDCG@10 after the last epoch (compare with
    rank_seq's "final epoch test" line);
  - rsc15: every next click of the test sessions, full ranking, no masking: Recall@20, MRR@20.
Dropout masks come from each side's own random streams, so the runs agree in distribution,
not bit for bit (the bar is 0.005 HR@10 / Recall@20).

Usage: python3 eval/seq_parity.py DIR [--data ../shared/data] [--threads 2]
"""
import argparse
import math
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "peers"))
import seqrec_models as P  # noqa: E402


def read_config(path):
    cfg = {}
    for line in open(path):
        k, _, v = line.strip().partition(" ")
        if k:
            cfg[k] = v
    return cfg


def read_batches(path):
    raw = np.fromfile(path, dtype=np.int64, offset=8)
    with open(path, "rb") as f:
        assert f.read(8) == b"XRSEQLOG", "not an xrec batch log"
    i = 0
    while i < raw.size:
        kind = int(raw[i])
        if kind == 1:
            b, t = int(raw[i + 1]), int(raw[i + 2])
            n = b * t
            base = i + 3
            yield ("sasrec", raw[base:base + n].reshape(b, t), raw[base + n:base + 2 * n].reshape(b, t),
                   raw[base + 2 * n:base + 3 * n].reshape(b, t))
            i = base + 3 * n
        elif kind == 2:
            b, s = int(raw[i + 1]), int(raw[i + 2])
            base = i + 3
            yield ("gru4rec", raw[base:base + b], raw[base + b:base + 2 * b], raw[base + 2 * b:base + 3 * b],
                   raw[base + 3 * b:base + 3 * b + s])
            i = base + 3 * b + s
        else:
            raise ValueError(f"bad batch kind {kind} at {i}")


def load_user_split(path):
    train_valid, test, n_items = [], [], 0
    for line in open(path):
        parts = [int(x) for x in line.split()]
        seq = [x - 1 for x in parts[1:]]
        n_items = max(n_items, max(parts[1:]))
        if len(seq) < 3:
            continue
        train_valid.append(seq[:-1])
        test.append(seq[-1])
    return train_valid, test, n_items


def load_sessions(path, vocab, grow):
    rows = []
    with open(path) as f:
        next(f)
        for k, line in enumerate(f):
            s, it, t = line.split("\t")
            rows.append((int(s), int(it), float(t), k))
    first = {}
    for s, _, t, _ in rows:
        first[s] = min(first.get(s, t), t)
    rows.sort(key=lambda r: (first[r[0]], r[0], r[2], r[3]))
    out, cur, cur_s = [], [], None
    for s, it, _, _ in rows:
        if s != cur_s:
            if len(cur) >= 2:
                out.append(cur)
            cur, cur_s = [], s
        if it not in vocab:
            if not grow:
                continue
            vocab[it] = len(vocab)
        cur.append(vocab[it])
    if len(cur) >= 2:
        out.append(cur)
    return out


@torch.no_grad()
def eval_sasrec(m, inputs, targets, n_items, T):
    m.eval()
    hr = ndcg = 0.0
    for u0 in range(0, len(inputs), 256):
        chunk = inputs[u0:u0 + 256]
        ids = torch.full((len(chunk), T), -1, dtype=torch.long)
        for r, h in enumerate(chunk):
            h = h[-T:]
            ids[r, T - len(h):] = torch.tensor(h)
        sc = m.scores(m.state(ids))
        for r, h in enumerate(chunk):
            tgt = targets[u0 + r]
            hist = set(inputs[u0 + r]) - {tgt}  # the target is never masked
            s = sc[r].clone()
            st = s[tgt].item()
            idx = torch.tensor(sorted(hist), dtype=torch.long)
            rank = int((s >= st).sum().item()) - 1 - int((s[idx] >= st).sum().item())
            if rank < 10:
                hr += 1
                ndcg += 1 / math.log2(rank + 2)
    m.train()
    return hr / len(inputs), ndcg / len(inputs)


@torch.no_grad()
def eval_gru_users(m, inputs, targets):
    m.eval()
    hr = ndcg = 0.0
    for u, (h, tgt) in enumerate(zip(inputs, targets)):
        state = torch.zeros(m.layers, 1, m.hidden)
        for it in h:
            state, out = m.step(torch.tensor([it]), state)
        s = m.score_all(out)[0]
        st = s[tgt].item()
        idx = torch.tensor(sorted(set(h) - {tgt}), dtype=torch.long)
        rank = int((s >= st).sum().item()) - 1 - int((s[idx] >= st).sum().item())
        if rank < 10:
            hr += 1
            ndcg += 1 / math.log2(rank + 2)
    m.train()
    return hr / len(inputs), ndcg / len(inputs)


@torch.no_grad()
def eval_sessions(m, sessions):
    m.eval()
    rec = mrr = 0.0
    ev = 0
    for s in sessions:
        state = torch.zeros(m.layers, 1, m.hidden)
        for i in range(len(s) - 1):
            state, out = m.step(torch.tensor([s[i]]), state)
            sc = m.score_all(out)[0]
            rank = int((sc >= sc[s[i + 1]]).sum().item()) - 1
            if rank < 20:
                rec += 1
                mrr += 1 / (rank + 1)
            ev += 1
    m.train()
    return rec / ev, mrr / ev


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data"))
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = read_config(os.path.join(a.dir, "config.txt"))
    init = load_file(os.path.join(a.dir, "init.safetensors"))
    n_items = int(cfg["n_items"])
    lr = float(cfg["lr"])
    if cfg["model"] == "sasrec":
        m = P.SASRec(n_items, dim=int(cfg["dim"]), max_len=int(cfg["max_len"]), blocks=int(cfg["blocks"]),
                     heads=int(cfg["heads"]), dropout=float(cfg["dropout"]), block=cfg.get("block", "pre_norm"))
        betas = (0.9, float(cfg.get("beta2", 0.999)))
    else:
        m = P.GRU4Rec(n_items, hidden=int(cfg["hidden"]))
        betas = (0.9, 0.999)
    m.load_xrec(init)
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=lr, betas=betas)
    h_prev = None
    steps = 0
    for b in read_batches(os.path.join(a.dir, "batches.bin")):
        opt.zero_grad()
        if b[0] == "sasrec":
            ids, tg, ng = (torch.from_numpy(np.ascontiguousarray(x)) for x in b[1:])
            loss = m.ce_loss(ids, tg) if cfg["loss"] == "ce" else m.bce_loss(ids, tg, ng)
        else:
            inp, tgt, frm, neg = (torch.from_numpy(np.ascontiguousarray(x)) for x in b[1:])
            h0 = torch.zeros(m.layers, len(inp), m.hidden)
            keep = frm >= 0
            if h_prev is not None and keep.any():
                h0[:, keep] = h_prev[:, frm[keep]]
            hn, out = m.step(inp, h0)
            sc = m.scores(out, torch.cat([tgt, neg]))
            rows = torch.arange(len(inp))
            loss = torch.nn.functional.cross_entropy(sc, rows) if cfg["loss"] == "ce" else \
                P.bpr_max(sc, rows, float(cfg["bpreg"]))
            h_prev = hn.detach()
        loss.backward()
        opt.step()
        steps += 1
    print(f"peer: replayed {steps} steps")
    ds = cfg["dataset"]
    if ds == "rsc15":
        vocab = {}
        d = os.path.join(a.data, "rsc15_100k")
        load_sessions(os.path.join(d, "yoochoose-clicks-100k_train_full.txt"), vocab, True)
        test = load_sessions(os.path.join(d, "yoochoose-clicks-100k_test.txt"), vocab, False)
        r, mr = eval_sessions(m, test)
        print(f"PEER rsc15 gru4rec {cfg['loss']}: Recall@20 {r:.4f} MRR@20 {mr:.4f}")
    else:
        f = "Toys_and_Games.txt" if ds == "toys" else "Beauty.txt"
        inputs, targets, _ = load_user_split(os.path.join(a.data, "sequences", f))
        if cfg["model"] == "sasrec":
            hr, nd = eval_sasrec(m, inputs, targets, n_items, int(cfg["max_len"]))
        else:
            hr, nd = eval_gru_users(m, inputs, targets)
        print(f"PEER {ds} {cfg['model']} {cfg['loss']}: final epoch test HR@10 {hr:.4f} NDCG@10 {nd:.4f}")


if __name__ == "__main__":
    main()
