"""Plain PyTorch modules for DeepFM, DCN-V2 and DIN whose eval-mode maths is exactly that of
xrec's models (include/xrec/models/{deepfm,dcn_v2,din}.hpp), written the way one writes
PyTorch: nn.Embedding per table, nn.Sequential of nn.Linear and activations, a Dice built
on nn.BatchNorm1d. Their state_dict keys are their own; the C++ side translates them with
xrec::io::torch_maps::{deepfm, dcn_v2, din} (include/xrec/io/state_dict.hpp).

Inputs (one batch of B rows):
  sparse  LongTensor [B, F]   LOCAL ids, one column per sparse field, each in its table's
                              [0, rows) (row 0 is the out-of-vocabulary / padding row)
  dense   Tensor [B, Dn]      (Dn may be 0)
DIN adds padded histories:
  hist    dict history field name -> LongTensor [B, L] (oldest first, padding after)
  lengths LongTensor [B]      real history length of each row (0 allowed)
Output: logits [B, 1].

A `Spec` says which table each sparse field and each history field draws from; it mirrors
the xrec::feature_layout the C++ side builds (tables in the same order).
"""
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn


@dataclass
class Spec:
    tables: List[Tuple[str, int]]                 # (name, rows), in xrec layout order
    sparse: List[Tuple[str, str]]                 # (field name, table name), layout order
    num_dense: int = 0
    history: List[Tuple[str, str]] = field(default_factory=list)  # (sequence field, table)

    def table_of(self, name):
        return [t for t, _ in self.tables].index(name)


class Inputs(nn.Module):
    """One nn.Embedding per table ("embeddings.<table>"); with first_order also a 1-wide
    nn.Embedding per table ("first_order.<table>") and nn.Linear(Dn, 1) over the dense
    features whose bias is the model's global bias ("dense_linear"), or a bare "bias"
    parameter when there are no dense features."""

    def __init__(self, spec: Spec, dim: int, first_order: bool):
        super().__init__()
        self.spec, self.dim = spec, dim
        self.embeddings = nn.ModuleDict({t: nn.Embedding(r, dim) for t, r in spec.tables})
        for e in self.embeddings.values():
            nn.init.normal_(e.weight, 0.0, 0.1)
        self.has_first_order = first_order
        if first_order:
            self.first_order = nn.ModuleDict({t: nn.Embedding(r, 1) for t, r in spec.tables})
            for e in self.first_order.values():
                nn.init.zeros_(e.weight)
            if spec.num_dense > 0:
                self.dense_linear = nn.Linear(spec.num_dense, 1)
            else:
                self.bias = nn.Parameter(torch.zeros(1))

    def fields(self, sparse):
        """[B, F, D]: the sparse fields' embeddings in layout order."""
        return torch.stack([self.embeddings[t](sparse[:, f]) for f, (_, t) in enumerate(self.spec.sparse)], 1)

    def linear(self, sparse, dense):
        """[B, 1]: first-order weights of every sparse field + dense linear + bias."""
        lin = sum(self.first_order[t](sparse[:, f]) for f, (_, t) in enumerate(self.spec.sparse))
        return lin + (self.dense_linear(dense) if self.spec.num_dense > 0 else self.bias)


def mlp(fan_in: int, hidden: Sequence[int]) -> nn.Sequential:
    """Linear, ReLU, Linear, ReLU, ... (xrec layers::mlp with relu)."""
    layers, w = [], fan_in
    for h in hidden:
        layers += [nn.Linear(w, h), nn.ReLU()]
        w = h
    return nn.Sequential(*layers)


class DeepFM(nn.Module):
    """logit = first_order + sum_{i<j} <e_i, e_j> + dnn_out(dnn([e_1; ..; e_F; dense]))."""

    def __init__(self, spec: Spec, dim=8, hidden=(256, 128)):
        super().__init__()
        self.inputs = Inputs(spec, dim, first_order=True)
        self.dnn = mlp(len(spec.sparse) * dim + spec.num_dense, hidden)
        self.dnn_out = nn.Linear(hidden[-1], 1, bias=False)

    def forward(self, sparse, dense):
        e = self.inputs.fields(sparse)
        s = e.sum(1)
        fm = 0.5 * (s * s - (e * e).sum(1)).sum(1, keepdim=True)
        x = torch.cat([e.flatten(1), dense], 1)
        return self.inputs.linear(sparse, dense) + fm + self.dnn_out(self.dnn(x))


class LowRankCross(nn.Module):
    """x0 * up(down(xl)) + xl: DCN-V2's low-rank cross layer (down: Linear(d, r, bias=False))."""

    def __init__(self, d, rank):
        super().__init__()
        self.down = nn.Linear(d, rank, bias=False)
        self.up = nn.Linear(rank, d)

    def forward(self, x0, xl):
        return x0 * self.up(self.down(xl)) + xl


class FullCross(nn.Linear):
    """x0 * (W xl + b) + xl: DCN-V2's full-rank cross layer."""

    def forward(self, x0, xl):
        return x0 * super().forward(xl) + xl


class DCNV2(nn.Module):
    """x0 = [e_1; ..; e_F; dense]; x_L after `layers` cross layers (full rank, or low rank
    with `rank`); parallel: logit = first_order + out([x_L; dnn(x0)]); stacked:
    first_order + out(dnn(x_L))."""

    def __init__(self, spec: Spec, dim=8, layers=2, rank=None, hidden=(128, 128), structure="parallel"):
        super().__init__()
        self.inputs = Inputs(spec, dim, first_order=True)
        d = len(spec.sparse) * dim + spec.num_dense
        self.cross = nn.ModuleList([FullCross(d, d) if rank is None else LowRankCross(d, rank) for _ in range(layers)])
        self.structure = structure
        self.dnn = mlp(d, hidden)
        self.out = nn.Linear(hidden[-1] + (d if structure == "parallel" else 0), 1, bias=False)

    def forward(self, sparse, dense):
        x0 = torch.cat([self.inputs.fields(sparse).flatten(1), dense], 1)
        xl = x0
        for layer in self.cross:
            xl = layer(x0, xl)
        h = torch.cat([xl, self.dnn(x0)], 1) if self.structure == "parallel" else self.dnn(xl)
        return self.inputs.linear(sparse, dense) + self.out(h)


class Dice(nn.Module):
    """DIN's Dice: p = sigmoid(BatchNorm1d(x) without affine), y = p x + (1 - p) alpha x.
    The BatchNorm's running statistics are what eval mode (and xrec) uses."""

    def __init__(self, num_features, eps=1e-8):
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(num_features))

    def forward(self, x):
        p = torch.sigmoid(self.bn(x))
        return p * x + (1 - p) * self.alpha * x


def act_mlp(fan_in, hidden, act, out):
    """Linear, act, Linear, act, ..., Linear(out): act is "dice", "prelu" or "sigmoid"."""
    layers, w = [], fan_in
    for h in hidden:
        a = Dice(h) if act == "dice" else nn.PReLU(h) if act == "prelu" else nn.Sigmoid()
        layers += [nn.Linear(w, h), a]
        w = h
    layers.append(nn.Linear(w, out))
    return nn.Sequential(*layers)


class DIN(nn.Module):
    """Deep Interest Network over `pairs` (candidate field, history field) sharing a table.
    q = [e(c_1); ..], k_j = [e(h_1[j]); ..] (P D wide);
      s_j = attention([q, k_j, q - k_j, q * k_j])           (real positions only)
      u   = sum_j s_j k_j                                    (no softmax; 0 for no history)
      logit = tower([u; e(every sparse field); dense])
    The attention unit runs on the real (unpadded) positions only, so Dice statistics in
    training cover real behaviours, as in xrec."""

    def __init__(self, spec: Spec, pairs, dim=8, att_hidden=(80, 40), att_act="dice", tower=(200, 80),
                 tower_act="dice"):
        super().__init__()
        self.spec, self.pairs = spec, list(pairs)
        self.embeddings = nn.ModuleDict({t: nn.Embedding(r, dim, padding_idx=0) for t, r in spec.tables})
        for e in self.embeddings.values():
            nn.init.normal_(e.weight, 0.0, 0.1)
            with torch.no_grad():
                e.weight[0].zero_()
        self.fields = dict(spec.sparse)
        self.hist_table = dict(spec.history)
        w = len(self.pairs) * dim
        self.attention = act_mlp(4 * w, att_hidden, att_act, 1)
        self.tower = act_mlp(w + len(spec.sparse) * dim + spec.num_dense, tower, tower_act, 1)

    def forward(self, sparse, dense, hist: Dict[str, torch.Tensor], lengths):
        names = [n for n, _ in self.spec.sparse]
        q = torch.cat([self.embeddings[self.fields[c]](sparse[:, names.index(c)]) for c, _ in self.pairs], -1)
        k = torch.cat([self.embeddings[self.hist_table[h]](hist[h]) for _, h in self.pairs], -1)  # [B, L, PD]
        B, L = k.shape[0], k.shape[1]
        mask = torch.arange(L)[None, :] < lengths[:, None]
        qe = q[:, None, :].expand_as(k)
        feat = torch.cat([qe, k, qe - k, qe * k], -1)[mask]               # [N, 4PD]
        scores = k.new_zeros(B, L)
        scores = scores.masked_scatter(mask, self.attention(feat)[:, 0])
        u = (scores[..., None] * k).sum(1)
        e = torch.cat([self.embeddings[t](sparse[:, f]) for f, (_, t) in enumerate(self.spec.sparse)], -1)
        return self.tower(torch.cat([u, e, dense], -1))

