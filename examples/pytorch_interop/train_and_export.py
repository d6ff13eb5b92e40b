#!/usr/bin/env python3
"""Trains the plain PyTorch DeepFM, DCN-V2 and DIN of torch_models.py on small synthetic
click data (a few hundred Adam steps, so the weights and the BatchNorm / Dice running
statistics are far from their initial values), then writes for each model
<out>/<case>.safetensors: its state_dict (float32, PyTorch's own key names) plus a golden
input and the logits of the trained module in eval mode (computed in float64 on the same
float32 weights) under the reserved "__golden__/" keys that xrec::io::verify_golden reads:

  __golden__/sparse [B, F] int64 local ids, __golden__/dense [B, Dn],
  __golden__/seq/<field> [B, L] int64 padded history, __golden__/lengths/<field> [B] int64,
  __golden__/logits [B, 1] float64

Usage:  python3 train_and_export.py [--out DIR] [--steps N]
Then:   build/<preset>/examples/xrec_load_torch_weights DIR     (see README.md)
Seeded (data, initialisation, golden rows): reruns agree to about 1e-6 but not bitwise, as
PyTorch's MKL GEMMs round differently from run to run; each file is consistent in itself
(the golden logits are computed from the very weights it holds).
"""
import argparse
import copy
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_models as tm  # noqa: E402

# The example's sizes (load_torch_weights.cpp builds the same layouts). tests/fixtures/
# gen_torch_state_dict_fixtures.py calls the same functions with smaller ones.
CTR_SPEC = tm.Spec(tables=[("user", 50), ("item", 200), ("cate", 12), ("city", 20)],
                   sparse=[("user_id", "user"), ("item_id", "item"), ("cate_id", "cate"), ("city_id", "city")],
                   num_dense=3)
DIN_SPEC = tm.Spec(tables=[("user", 50), ("item", 200), ("cate", 12)],
                   sparse=[("user_id", "user"), ("item_id", "item"), ("cate_id", "cate")], num_dense=2,
                   history=[("hist_item_id", "item"), ("hist_cate_id", "cate")])
DIN_PAIRS = [("item_id", "hist_item_id"), ("cate_id", "hist_cate_id")]
MAX_LEN = 8


def synthetic(spec, rows, g, max_len=MAX_LEN):
    """A batch of synthetic clicks: ids uniform over [1, rows) (0 is padding / OOV), dense
    N(0, 1), labels from a fixed hidden rule of the ids and dense values (so the models
    have something to learn); histories of lengths 0..max_len drawn from the item table."""
    sparse = torch.stack([torch.randint(1, dict(spec.tables)[t], (rows,), generator=g) for _, t in spec.sparse], 1)
    dense = torch.randn(rows, spec.num_dense, generator=g)
    hist, lengths = {}, torch.randint(0, max_len + 1, (rows,), generator=g)
    pos = torch.arange(max_len)[None, :] < lengths[:, None]
    for name, t in spec.history:
        h = torch.randint(1, dict(spec.tables)[t], (rows, max_len), generator=g)
        hist[name] = torch.where(pos, h, torch.zeros_like(h))
    # The rule: parity-like interactions of ids plus a dense term, and for DIN a bonus when
    # the candidate's category occurs in the history.
    z = ((sparse[:, 0] * 7 + sparse[:, 1] * 3) % 5 - 2).float() * 0.8
    if spec.num_dense:
        z = z + dense[:, 0] - 0.5 * dense[:, -1]
    if spec.history:
        seen = (hist["hist_cate_id"] == sparse[:, 2:3]) & pos
        z = z + 1.5 * seen.any(1).float() - 0.5
    labels = (torch.rand(rows, generator=g) < torch.sigmoid(z)).float()[:, None]
    return sparse, dense, hist, lengths, labels


def forward(model, batch):
    sparse, dense, hist, lengths, _ = batch
    if isinstance(model, tm.DIN):
        return model(sparse, dense, hist, lengths)
    return model(sparse, dense)


def train(model, spec, steps, seed, batch_rows=256, lr=1e-2):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        b = synthetic(spec, batch_rows, g)
        loss = F.binary_cross_entropy_with_logits(forward(model, b), b[-1])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def golden_batch(spec, rows, seed, max_len=MAX_LEN):
    """The golden input: random rows, with an empty history in row 0 and a full one in row 1."""
    g = torch.Generator().manual_seed(seed)
    sparse, dense, hist, lengths, _ = synthetic(spec, rows, g, max_len)
    if spec.history:
        lengths[0], lengths[1] = 0, max_len
        for name, t in spec.history:
            hist[name][0].zero_()
            hist[name][1] = torch.randint(1, dict(spec.tables)[t], (max_len,), generator=g)
    return sparse, dense, hist, lengths, None


def export(model, spec, path, golden_rows, seed):
    """Writes the state_dict (float32) and the golden input / float64 logits to `path`."""
    model.eval()
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    b = golden_batch(spec, golden_rows, seed)
    sparse, dense, hist, lengths, _ = b
    ref = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        logits = forward(ref, (sparse, dense.double(), hist, lengths, None))
    tensors["__golden__/sparse"] = sparse.contiguous()
    tensors["__golden__/dense"] = dense.contiguous()
    for name, _ in spec.history:
        tensors[f"__golden__/seq/{name}"] = hist[name].contiguous()
        tensors[f"__golden__/lengths/{name}"] = lengths.clone()
    tensors["__golden__/logits"] = logits.contiguous()
    save_file(tensors, path, metadata={"format": "pt", "module": type(model).__name__})
    return logits


def build(case, spec=None, dim=8, small=False):
    """The module of one case: deepfm, dcn_v2, dcn_v2_low_rank or din."""
    hid = (16, 8) if small else (64, 32)
    if case == "deepfm":
        return tm.DeepFM(spec or CTR_SPEC, dim=dim, hidden=hid)
    if case == "dcn_v2":
        return tm.DCNV2(spec or CTR_SPEC, dim=dim, layers=2, hidden=hid)
    if case == "dcn_v2_low_rank":
        return tm.DCNV2(spec or CTR_SPEC, dim=dim, layers=2, rank=3, hidden=hid, structure="stacked")
    if case == "din":
        att = (8, 4) if small else (32, 16)
        return tm.DIN(spec or DIN_SPEC, DIN_PAIRS, dim=dim, att_hidden=att, att_act="dice", tower=hid,
                      tower_act="dice")
    raise ValueError(case)


CASES = ["deepfm", "dcn_v2", "dcn_v2_low_rank", "din"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="torch_weights")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # fewer sources of run-to-run rounding differences
    os.makedirs(args.out, exist_ok=True)
    for i, case in enumerate(CASES):
        torch.manual_seed(1000 + i)
        spec = DIN_SPEC if case == "din" else CTR_SPEC
        model = build(case)
        loss = train(model, spec, args.steps, seed=2000 + i)
        path = os.path.join(args.out, f"{case}.safetensors")
        logits = export(model, spec, path, golden_rows=32, seed=3000 + i)
        print(f"{case}: trained {args.steps} steps, last loss {loss:.4f}; wrote {path} "
              f"({os.path.getsize(path)} bytes, golden logits in [{float(logits.min()):.3f}, {float(logits.max()):.3f}])")


if __name__ == "__main__":
    main()
