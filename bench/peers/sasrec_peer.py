"""PyTorch peer of bench/sasrec.cpp (imported by torch_peer.py): one user's SASRec request.

  sasrec_infer/n<n>/d<D>/t<T>/b<blocks>/h<heads>/len<L>/k<k>
      the user's last L items -> the forward over them -> H at the last position h ->
      torch.topk(E @ h, k) over every item
  sasrec_fwd_infer/n<n>/d<D>/t<T>/b<blocks>/h<heads>/len<L>
      the forward alone

The model is the SASRec module of tests/peers/seqrec_models.py (xrec's own parity peer:
torch.nn.TransformerEncoderLayer(norm_first=True) blocks, parameter names 1:1 with xrec's),
in eval mode, fp32, one thread, under torch.inference_mode. Its weights are filled from
their names by the same formula as bench/sasrec.cpp (fill_weights), so both sides hold the
same bits.

The request path is the module's forward without its training-time generality: one user's
window has no padding (sasrec, on both sides, skips the columns that are padding in every
row), so the only mask is causal and is passed as SDPA's is_causal hint (with a
precomputed mask, which PyTorch requires beside the hint); positions first..T-1 keep their
absolute index. At setup the result is checked against the module's own state() on the
left-padded row (torch.testing.assert_close).
"""
import math
import os
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "peers"))
from seqrec_models import SASRec  # noqa: E402  (tests/peers: H8's parity peer)

SASREC_KINDS = {"sasrec_infer", "sasrec_fwd_infer"}
M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _fnv1a64(s):
    h = 0xcbf29ce484222325
    for c in s.encode():
        h = ((h ^ c) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def _weights(name, shape):
    """bench/sasrec.cpp's fill_weights formula for every element of `name` (float32, `shape`)."""
    n = int(np.prod(shape))
    with np.errstate(over="ignore"):
        i = np.arange(1, n + 1, dtype=np.uint64)
        z = np.uint64(_fnv1a64(name)) + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float64) * 2.0 ** -23 - 1.0
    if len(shape) == 2:
        v = u * math.sqrt(6.0 / (shape[0] + shape[1]))
    elif name.endswith("weight"):
        v = 1.0 + u * 0.1
    else:
        v = u * 0.1
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def fill_weights(model):
    model.load_xrec({name: _weights(name, tuple(p.shape)) for name, p in model.export_xrec().items()})


def history(length, n):
    return [(i * 7919 + 13) % n for i in range(length)]


def sasrec_case(kind, args, threads):
    """(step, threads, infer) for a sasrec case."""
    pat = r"n(\d+)/d(\d+)/t(\d+)/b(\d+)/h(\d+)/len(\d+)" + (r"/k(\d+)" if kind == "sasrec_infer" else "")
    m = re.fullmatch(pat, args)
    if not m:
        raise ValueError(f"bad {kind} case arguments '{args}'")
    n, d, t, blocks, heads, length = map(int, m.groups()[:6])
    k = int(m.group(7)) if kind == "sasrec_infer" else 0
    if not 1 <= length <= t:
        raise ValueError(f"{kind}: history length {length} outside 1..{t}")
    model = SASRec(n, d, t, blocks, heads).eval()
    model.requires_grad_(False)
    fill_weights(model)
    hist = history(length, n)
    E, P = model.item_emb, model.pos_emb.weight
    scale = math.sqrt(d)
    causal = {w: torch.ones(w, w, dtype=torch.bool).tril().logical_not() for w in range(1, t + 1)}  # True: masked

    def state():
        # The request: the last T items (all of them here), their window, the blocks.
        ids = torch.tensor(hist[-t:], dtype=torch.long)
        w = ids.shape[0]
        x = (F.embedding(ids, E) * scale + P[t - w:])[None]
        mask = causal[w]
        for blk in model.blocks:
            x = blk(x, src_mask=mask, is_causal=True)
        return model.last_norm(x[0, -1])

    with torch.inference_mode():
        row = torch.full((1, t), -1, dtype=torch.long)
        row[0, t - length:] = torch.tensor(hist[-t:])
        torch.testing.assert_close(state(), model.state(row)[0], rtol=1e-5, atol=1e-5)

    if kind == "sasrec_fwd_infer":
        return state, threads, True

    def step():
        return torch.topk(E @ state(), k)

    return step, threads, True
