"""PyTorch peers of xrec's CTR models (include/xrec/models/{lr,fm,deepfm,wide_deep,nfm,dcn,
dcn_v2,autoint}.hpp), written to compute exactly what the C++ models compute.

Used by tests/fixtures/gen_ctr_model_fixtures.py (parity fixtures, float64) and by the
Criteo training-parity runs; import it with tests/peers on sys.path:

    from ctr_models import Layout, DeepFM, load_xrec, to_xrec
    lay = Layout(total_rows=..., num_sparse=26, num_dense=13, wide_only=[False] * 26)
    m = DeepFM(lay, dim=8, hidden=(256, 128))
    load_xrec(m, tensors, prefix="deepfm")      # tensors: {xrec name: torch.Tensor}
    logits = m(sparse, dense)                    # sparse [B, F] int64 global ids, dense [B, Dn]

Batch layout (as xrec::batch): sparse [B, F] int64 GLOBAL ids (the table offset already
added, one column per sparse field of the layout, wide_only fields included), dense [B, Dn]
float. Output: logits [B, 1]; the loss is binary_cross_entropy_with_logits (mean). Sequence
(multi-hot) fields are not supported by the peers.

Options: each peer takes the layout and keyword arguments named after the C++ options:
dim (options.dim); hidden, activation, dropout, layer_norm (options.dnn: mlp_options hidden,
act, dropout, layer_norm); nfm: bi_batch_norm, bi_dropout, bn_eps, bn_momentum; dcn:
cross_layers; dcn_v2: cross_layers, cross_kind ("full" | "low_rank" | "mixture"), rank,
experts, expert_activation (options.cross), structure ("parallel" | "stacked"); autoint:
attention_layers, heads, residual, attention_bias, attention_dropout. sparse=True makes the
embedding lookups emit sparse gradients (F.embedding(sparse=True): for full-size tables,
with torch.optim.SparseAdam / Adagrad); the default dense gradients are what the fixtures
compare. Initialisation follows xrec's defaults in distribution (not in values: load xrec's
tensors with load_xrec / load_xrec_checkpoint to start from the same point).

Parameter names, one to one: the xrec name of a parameter is "<prefix>." + its key in the
peer's state_dict(), where <prefix> is the model's options.name ("deepfm", ...). Every
tensor has the same shape on both sides except BatchNorm's running_mean / running_var,
which are [C] here and [1, C] in xrec (xrec keeps them as one-row tables that no optimizer
touches); num_batches_tracked exists only here (skipped by load_xrec / to_xrec). The names:
  <p>.embedding [rows, D]            field embeddings, one table over the global id space
  <p>.linear [rows, 1]               first-order weights
  <p>.dense_linear.weight [1, Dn]    first-order weights of the dense values (Dn > 0 only)
  <p>.dense_linear.bias [1]          the global bias
  <p>.dnn.<i>.weight / .bias         MLP layers ([out, in], nn.Linear layout), .ln.weight /
                                     .ln.bias with layer_norm
  <p>.dnn_linear.weight [1, H]       bias-free output linear of the deep part
  <p>.cross.<l>.w / .b               dcn: w [d], b [d]; dcn_v2 full: w [d, d] ([out, in]), b [d]
  <p>.cross.<l>.u / .v / .b          dcn_v2 low rank: u, v [d, r]
  <p>.cross.<l>.u / .v / .c / .b, <p>.cross.gate   dcn_v2 mixture: u, v [K, d, r], c [K, r, r],
                                     gate [K, d]
  <p>.bi_bn.weight / .bias / .running_mean / .running_var   nfm with bi_batch_norm
  <p>.att.<l>.in_proj_weight [3D, D], .in_proj_bias [3D], .out_proj.weight [D, D],
  .out_proj.bias [D], .res.weight [D, D]   autoint (nn.MultiheadAttention names)
"""
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Layout:
    """What the peers need of an xrec::feature_layout: the size of the global id space,
    the number of sparse fields (and which are wide_only cross features) and of dense ones."""
    total_rows: int
    num_sparse: int
    num_dense: int
    wide_only: List[bool] = field(default_factory=list)

    def __post_init__(self):
        if not self.wide_only:
            self.wide_only = [False] * self.num_sparse
        assert len(self.wide_only) == self.num_sparse

    @property
    def deep_fields(self) -> List[int]:
        return [f for f in range(self.num_sparse) if not self.wide_only[f]]


_ACT = {"relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "identity": lambda x: x,
        "gelu": lambda x: F.gelu(x, approximate="none")}


class _DenseLayer(nn.Module):
    """One hidden layer of layers::mlp: linear, [layer norm], activation, [dropout]."""

    def __init__(self, fan_in, fan_out, layer_norm):
        super().__init__()
        lin = nn.Linear(fan_in, fan_out)
        self.weight, self.bias = lin.weight, lin.bias
        self.ln = nn.LayerNorm(fan_out, eps=1e-5) if layer_norm else None

    def forward(self, x):
        x = F.linear(x, self.weight, self.bias)
        return self.ln(x) if self.ln is not None else x


class MLP(nn.Module):
    """layers::mlp without its optional "out" head: per hidden width, linear -> [LayerNorm]
    -> activation -> [dropout]. Children "0", "1", .. as xrec's "<name>.<i>"."""

    def __init__(self, fan_in, hidden: Sequence[int], activation="relu", dropout=0.0, layer_norm=False):
        super().__init__()
        self.act, self.p = _ACT[activation], dropout
        widths = [fan_in] + list(hidden)
        for i in range(len(hidden)):
            self.add_module(str(i), _DenseLayer(widths[i], widths[i + 1], layer_norm))
        self.out_features = widths[-1]

    def forward(self, x):
        for layer in self.children():
            x = self.act(layer(x))
            if self.p > 0:
                x = F.dropout(x, self.p, self.training)
        return x


class CTRBase(nn.Module):
    """models::ctr_inputs: the embedding table, the first-order table and the dense linear."""

    def __init__(self, layout: Layout, dim=8, embeddings=True, first_order=True, embedding_std=1e-2, sparse=False):
        super().__init__()
        self.layout, self.dim, self.sparse = layout, dim, sparse
        self.register_buffer("deep_idx", torch.tensor(layout.deep_fields, dtype=torch.long), persistent=False)
        if embeddings:
            self.embedding = nn.Parameter(torch.randn(layout.total_rows, dim) * embedding_std)
        if first_order:
            self.linear = nn.Parameter(torch.zeros(layout.total_rows, 1))
            if layout.num_dense > 0:
                self.dense_linear = nn.Linear(layout.num_dense, 1)
                nn.init.zeros_(self.dense_linear.bias)
            else:
                self.dense_linear = nn.Module()
                self.dense_linear.bias = nn.Parameter(torch.zeros(1))

    def fields(self, sparse):
        """[B, F', D]: embeddings of the non-wide_only sparse fields, in layout order."""
        return F.embedding(sparse[:, self.deep_idx], self.embedding, sparse=self.sparse)

    def first_order(self, sparse, dense):
        """[B, 1]: sum of the first-order weights of all sparse fields + dense linear + bias."""
        lin = F.embedding(sparse, self.linear, sparse=self.sparse).sum(dim=1)
        if self.layout.num_dense > 0:
            return lin + self.dense_linear(dense)
        return lin + self.dense_linear.bias

    def deep_input(self, e, dense):
        """[B, F' D + Dn]: flattened field embeddings followed by the dense values."""
        x = e.flatten(1)
        return torch.cat([x, dense], dim=1) if self.layout.num_dense > 0 else x


class LR(CTRBase):
    def __init__(self, layout, sparse=False, **kw):
        super().__init__(layout, dim=1, embeddings=False, sparse=sparse)

    def forward(self, sparse, dense):
        return self.first_order(sparse, dense)


def fm_term(e):
    """sum_{i<j} <e_i, e_j> per row, [B, 1]."""
    s = e.sum(dim=1)
    return 0.5 * (s * s - (e * e).sum(dim=1)).sum(dim=1, keepdim=True)


class FM(CTRBase):
    def __init__(self, layout, dim=8, sparse=False, **kw):
        super().__init__(layout, dim, sparse=sparse)

    def forward(self, sparse, dense):
        return self.first_order(sparse, dense) + fm_term(self.fields(sparse))


class DeepFM(CTRBase):
    def __init__(self, layout, dim=8, hidden=(256, 128), activation="relu", dropout=0.0, layer_norm=False,
                 sparse=False, **kw):
        super().__init__(layout, dim, sparse=sparse)
        d = len(layout.deep_fields) * dim + layout.num_dense
        self.dnn = MLP(d, hidden, activation, dropout, layer_norm) if hidden else None
        self.dnn_linear = nn.Linear(self.dnn.out_features, 1, bias=False) if hidden else None

    def forward(self, sparse, dense):
        e = self.fields(sparse)
        logit = self.first_order(sparse, dense) + fm_term(e)
        if self.dnn is not None:
            logit = logit + self.dnn_linear(self.dnn(self.deep_input(e, dense)))
        return logit


class WideDeep(CTRBase):
    def __init__(self, layout, dim=8, hidden=(256, 128), activation="relu", dropout=0.0, layer_norm=False,
                 sparse=False, **kw):
        super().__init__(layout, dim, sparse=sparse)
        d = len(layout.deep_fields) * dim + layout.num_dense
        self.dnn = MLP(d, hidden, activation, dropout, layer_norm)
        self.dnn_linear = nn.Linear(self.dnn.out_features, 1, bias=False)

    def forward(self, sparse, dense):
        deep = self.dnn_linear(self.dnn(self.deep_input(self.fields(sparse), dense)))
        return self.first_order(sparse, dense) + deep


class NFM(CTRBase):
    def __init__(self, layout, dim=8, hidden=(128, 128), activation="relu", dropout=0.0, layer_norm=False,
                 bi_batch_norm=False, bi_dropout=0.0, bn_eps=1e-5, bn_momentum=0.1, sparse=False, **kw):
        super().__init__(layout, dim, sparse=sparse)
        self.bi_bn = nn.BatchNorm1d(dim, eps=bn_eps, momentum=bn_momentum) if bi_batch_norm else None
        self.bi_dropout = bi_dropout
        self.dnn = MLP(dim + layout.num_dense, hidden, activation, dropout, layer_norm)
        self.dnn_linear = nn.Linear(self.dnn.out_features, 1, bias=False)

    def forward(self, sparse, dense):
        e = self.fields(sparse)
        s = e.sum(dim=1)
        p = 0.5 * (s * s - (e * e).sum(dim=1))
        if self.bi_bn is not None:
            p = self.bi_bn(p)
        if self.bi_dropout > 0:
            p = F.dropout(p, self.bi_dropout, self.training)
        if self.layout.num_dense > 0:
            p = torch.cat([p, dense], dim=1)
        return self.first_order(sparse, dense) + self.dnn_linear(self.dnn(p))


class _CrossV1(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.empty(d))
        nn.init.xavier_normal_(self.w.view(d, 1))
        self.b = nn.Parameter(torch.zeros(d))

    def forward(self, x0, xl):
        return x0 * (xl @ self.w).unsqueeze(1) + self.b + xl


class DCN(CTRBase):
    def __init__(self, layout, dim=8, cross_layers=2, hidden=(128, 128), activation="relu", dropout=0.0,
                 layer_norm=False,
                 sparse=False, **kw):
        super().__init__(layout, dim, sparse=sparse)
        d = len(layout.deep_fields) * dim + layout.num_dense
        self.cross = nn.ModuleList([_CrossV1(d) for _ in range(cross_layers)])
        self.dnn = MLP(d, hidden, activation, dropout, layer_norm) if hidden else None
        self.dnn_linear = nn.Linear(d + (self.dnn.out_features if hidden else 0), 1, bias=False)

    def forward(self, sparse, dense):
        x0 = self.deep_input(self.fields(sparse), dense)
        xl = x0
        for layer in self.cross:
            xl = layer(x0, xl)
        h = torch.cat([xl, self.dnn(x0)], dim=1) if self.dnn is not None else xl
        return self.first_order(sparse, dense) + self.dnn_linear(h)


class _CrossV2Layer(nn.Module):
    def __init__(self, d, kind, rank, experts):
        super().__init__()
        self.kind = kind
        if kind == "full":
            self.w = nn.Parameter(nn.init.xavier_normal_(torch.empty(d, d)))
        elif kind == "low_rank":
            self.u = nn.Parameter(nn.init.xavier_normal_(torch.empty(d, rank)))
            self.v = nn.Parameter(nn.init.xavier_normal_(torch.empty(d, rank)))
        else:
            self.u = nn.Parameter(nn.init.xavier_normal_(torch.empty(experts, d, rank)))
            self.v = nn.Parameter(nn.init.xavier_normal_(torch.empty(experts, d, rank)))
            self.c = nn.Parameter(nn.init.xavier_normal_(torch.empty(experts, rank, rank)))
        self.b = nn.Parameter(torch.zeros(d))

    def forward(self, x0, xl, gate=None, act=None):
        if self.kind == "full":
            return x0 * F.linear(xl, self.w, self.b) + xl
        if self.kind == "low_rank":
            return x0 * ((xl @ self.v) @ self.u.t() + self.b) + xl
        # Mixture (the DCN-V2 paper's code, DeepCTR-Torch CrossNetMix): per expert k,
        # g(V_k^T x_l) -> C_k -> g -> U_k, + b, * x0; softmax gate over bias-free scores.
        pi = torch.softmax(xl @ gate.t(), dim=1)                        # [B, K]
        h = act(torch.einsum("bd,kdr->kbr", xl, self.v))                 # [K, B, r]
        h = act(torch.einsum("kbr,ksr->kbs", h, self.c))                 # C_k h
        u = torch.einsum("kbr,kdr->kbd", h, self.u)                      # [K, B, d]
        mix = torch.einsum("bk,kbd->bd", pi, u)
        return x0 * (mix + self.b) + xl


class CrossNetV2(nn.Module):
    """layers::cross_net_v2: children "0", "1", .. and, for the mixture, "gate" [K, d]."""

    def __init__(self, d, layers=2, kind="full", rank=0, experts=4, activation="tanh"):
        super().__init__()
        self.kind, self.act = kind, _ACT[activation]
        if kind == "mixture":
            bound = d ** -0.5
            self.gate = nn.Parameter(torch.empty(experts, d).uniform_(-bound, bound))
        for l in range(layers):
            self.add_module(str(l), _CrossV2Layer(d, kind, rank, experts))

    def forward(self, x0):
        xl = x0
        for layer in self.children():
            xl = layer(x0, xl, getattr(self, "gate", None), self.act)
        return xl


class DCNv2(CTRBase):
    def __init__(self, layout, dim=8, cross_layers=2, cross_kind="full", rank=0, experts=4, expert_activation="tanh",
                 hidden=(128, 128), activation="relu", dropout=0.0, layer_norm=False, structure="parallel",
                 sparse=False, **kw):
        super().__init__(layout, dim, sparse=sparse)
        d = len(layout.deep_fields) * dim + layout.num_dense
        self.structure = structure
        self.cross = CrossNetV2(d, cross_layers, cross_kind, rank, experts, expert_activation)
        self.dnn = MLP(d, hidden, activation, dropout, layer_norm) if hidden else None
        if self.dnn is None:
            head = d
        else:
            head = self.dnn.out_features + (d if structure == "parallel" else 0)
        self.dnn_linear = nn.Linear(head, 1, bias=False)

    def forward(self, sparse, dense):
        x0 = self.deep_input(self.fields(sparse), dense)
        h = self.cross(x0)
        if self.dnn is not None:
            h = self.dnn(h) if self.structure == "stacked" else torch.cat([h, self.dnn(x0)], dim=1)
        return self.first_order(sparse, dense) + self.dnn_linear(h)


class _Interacting(nn.MultiheadAttention):
    """One AutoInt interacting layer: nn.MultiheadAttention (its parameters keep their
    names) plus the residual projection "res" (bias-free), then ReLU."""

    def __init__(self, dim, heads, bias, dropout, residual):
        super().__init__(dim, heads, dropout=dropout, bias=bias, batch_first=True)
        self.res = nn.Linear(dim, dim, bias=False) if residual else None

    def forward(self, x):
        a = super().forward(x, x, x, need_weights=False)[0]
        if self.res is not None:
            a = a + self.res(x)
        return F.relu(a)


class AutoInt(CTRBase):
    def __init__(self, layout, dim=8, attention_layers=3, heads=2, residual=True, attention_bias=False,
                 attention_dropout=0.0, hidden=(256, 128), activation="relu", dropout=0.0, layer_norm=False,
                 sparse=False, **kw):
        super().__init__(layout, dim, sparse=sparse)
        nf = len(layout.deep_fields)
        self.att = nn.ModuleList([_Interacting(dim, heads, attention_bias, attention_dropout, residual)
                                  for _ in range(attention_layers)])
        self.dnn = MLP(nf * dim + layout.num_dense, hidden, activation, dropout, layer_norm) if hidden else None
        self.dnn_linear = nn.Linear(nf * dim + (self.dnn.out_features if hidden else 0), 1, bias=False)

    def forward(self, sparse, dense):
        e = self.fields(sparse)
        x = e
        for layer in self.att:
            x = layer(x)
        h = x.flatten(1)
        if self.dnn is not None:
            h = torch.cat([h, self.dnn(self.deep_input(e, dense))], dim=1)
        return self.first_order(sparse, dense) + self.dnn_linear(h)


MODELS = {"lr": LR, "fm": FM, "deepfm": DeepFM, "wide_deep": WideDeep, "nfm": NFM, "dcn": DCN, "dcn_v2": DCNv2,
          "autoint": AutoInt}


def _skip(key):
    return key.endswith("num_batches_tracked")


def xrec_names(module: nn.Module, prefix: str):
    """{peer state_dict key: xrec parameter name}."""
    return {k: f"{prefix}.{k}" for k in module.state_dict() if not _skip(k)}


def load_xrec(module: nn.Module, tensors, prefix: str):
    """Copies xrec tensors ({xrec name: tensor}, e.g. safetensors.torch.load_file of an xrec
    checkpoint) into the peer, converting dtype; every peer tensor must be present."""
    sd = module.state_dict()
    with torch.no_grad():
        for k, name in xrec_names(module, prefix).items():
            if name not in tensors:
                raise KeyError(f"load_xrec: no tensor '{name}' for peer key '{k}'")
            src = tensors[name]
            if src.numel() != sd[k].numel():
                raise ValueError(f"load_xrec: '{name}' has shape {tuple(src.shape)}, peer '{k}' {tuple(sd[k].shape)}")
            sd[k].copy_(src.reshape(sd[k].shape).to(sd[k].dtype))


def load_xrec_checkpoint(module: nn.Module, path: str, prefix: str):
    """load_xrec from an xrec checkpoint file (io::save_checkpoint: safetensors, F32 or F64);
    extra tensors in the file (optimizer state) are ignored."""
    from safetensors.torch import load_file
    load_xrec(module, load_file(path), prefix)


def to_xrec(module: nn.Module, prefix: str):
    """{xrec name: tensor in xrec's shape} of the peer's parameters and buffers."""
    out = {}
    for k, t in module.state_dict().items():
        if _skip(k):
            continue
        if k.endswith("running_mean") or k.endswith("running_var"):
            t = t.reshape(1, -1)
        out[f"{prefix}.{k}"] = t.detach().clone().contiguous()
    return out
