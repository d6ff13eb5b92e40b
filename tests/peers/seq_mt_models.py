"""PyTorch peers of xrec's sequence and multi-task CTR models (include/xrec/models/{din,bst,
shared_bottom,mmoe,esmm}.hpp), written from the same formulas, for parity fixtures
(tests/fixtures/gen_seq_mt_model_fixtures.py) and for training-parity runs.

Inputs of every peer's forward(sparse, dense, seqs, seq_weights=None):
  sparse  LongTensor [B, F]   global ids (table offsets added), one column per sparse field
  dense   Tensor [B, Dn]      (Dn may be 0)
  seqs    list, one (values LongTensor [nnz], offsets LongTensor [B + 1]) per sequence field,
          in layout order, global ids, oldest first
  seq_weights  optional list of per-id weight tensors (or None) per sequence field
and it returns logits [B, tasks]. loss(logits, labels) is the model's training loss
(mean BCE with logits, ESMM's entire-space loss for esmm); probabilities(logits) as xrec.

The layout is a plain dict mirroring xrec::feature_layout (see Layout below).

Name map (xrec checkpoint name <-> this module's state_dict key):
  xrec "<kind>.<rest>" == torch "<rest>", with two exceptions:
  - the embedding table: xrec "<kind>.embedding" [total_rows, D] == torch "embedding.weight";
  - Dice running statistics: xrec "<...>.act.running_mean" / ".running_var" are [1, C]
    tables, torch buffers of shape [C].
  load_xrec(tensors) / export_xrec() apply this map (tensors: a dict name -> tensor, e.g.
  safetensors.torch.load_file of an xrec checkpoint). Transformer blocks are
  torch.nn.TransformerEncoderLayer modules, so their keys are PyTorch's own.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# --------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------
class Layout:
    """tables [(name, rows)], sparse [(name, table_index, wide_only)], dense [names],
    sequences [(name, table_index, max_len, pooling 'sum'|'mean'|'max', weighted)],
    tasks [names]. Offsets are laid end to end as in xrec."""

    def __init__(self, tables, sparse, dense, sequences, tasks):
        self.tables = [(n, r) for n, r in tables]
        self.sparse = [tuple(s) + (False,) * (3 - len(s)) for s in sparse]
        self.dense = list(dense)
        self.sequences = [tuple(s) + (False,) * (5 - len(s)) for s in sequences]
        self.tasks = list(tasks)
        self.offsets = []
        off = 0
        for _, r in self.tables:
            self.offsets.append(off)
            off += r
        self.total_rows = off

    def find_sparse(self, name):
        return [s[0] for s in self.sparse].index(name)

    def find_sequence(self, name):
        return [s[0] for s in self.sequences].index(name)

    def deep_fields(self):
        return [i for i, s in enumerate(self.sparse) if not s[2]]


def rows_of(offsets):
    """Row index of every position of a jagged field: [nnz]."""
    lens = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(len(lens)), lens)


def pool(emb, values, offsets, mode, weights=None):
    """embedding_bag with xrec's semantics: mean divides by the number of ids (not by the sum
    of the weights), empty bags give zeros; max ties split the gradient (xrec: first wins)."""
    B = len(offsets) - 1
    e = emb(values)
    if weights is not None:
        e = e * weights[:, None]
    rows = rows_of(offsets)
    if mode == "max":
        idx = rows[:, None].expand_as(e)
        return e.new_zeros(B, e.shape[1]).scatter_reduce(0, idx, e, "amax", include_self=False)
    y = e.new_zeros(B, e.shape[1]).index_add(0, rows, e)
    if mode == "mean":
        lens = (offsets[1:] - offsets[:-1]).to(e.dtype)
        y = y / lens.clamp(min=1)[:, None]
    return y


def segment_softmax(s, rows, B):
    """Softmax of s [N] within the rows' segments (rows [N] the owning row of each entry)."""
    if s.numel() == 0:
        return s
    m = s.new_zeros(B).scatter_reduce(0, rows, s.detach(), "amax", include_self=False)
    e = torch.exp(s - m[rows])
    z = s.new_zeros(B).index_add(0, rows, e)
    return e / z[rows]


# --------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------
class Dice(nn.Module):
    """xrec's layers::dice: p = sigmoid((x - mean) / sqrt(var + eps)) with the batch mean and
    biased variance in training (running averages updated, unbiased variance, momentum),
    the running averages in eval; y = p x + (1 - p) alpha x. alpha starts at zero."""

    def __init__(self, c, eps=1e-8, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.alpha = nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))

    def forward(self, x):
        if self.training:
            if x.shape[0] == 0:
                return x
            mean = x.mean(0)
            var = x.var(0, unbiased=False)
            with torch.no_grad():
                n = x.shape[0]
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * n / max(n - 1, 1))
        else:
            mean, var = self.running_mean, self.running_var
        p = torch.sigmoid((x - mean) / torch.sqrt(var + self.eps))
        return p * x + (1 - p) * self.alpha * x


def make_act(kind, width, dice_eps=1e-8):
    """xrec's layers::unit_activation."""
    if kind == "relu":
        return nn.ReLU()
    if kind == "sigmoid":
        return nn.Sigmoid()
    if kind == "tanh":
        return nn.Tanh()
    if kind == "gelu":
        return nn.GELU()
    if kind == "identity":
        return nn.Identity()
    if kind == "prelu":
        return nn.PReLU(width, init=0.25)
    if kind == "dice":
        return Dice(width, eps=dice_eps)
    raise ValueError(kind)


class ActTower(nn.Module):
    """xrec's models::act_tower and layers::mlp (+ out): for each hidden width a Linear
    "<i>" and its activation "<i>.act" (learned ones have parameters there), then "out"."""

    def __init__(self, in_f, hidden, out, act="relu", dropout=0.0):
        super().__init__()
        self.layers = nn.ModuleDict()
        self.act_kind, self.dropout = act, dropout
        w = in_f
        self.n = len(hidden)
        for i, h in enumerate(hidden):
            self.layers[str(i)] = nn.Linear(w, h)
            w = h
        self.acts = nn.ModuleList([make_act(act, h) for h in hidden])
        if out > 0:
            self.layers["out"] = nn.Linear(w, out)
        self.out_features = out if out > 0 else w

    def forward(self, x):
        for i in range(self.n):
            x = self.acts[i](self.layers[str(i)](x))
            if self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
        if "out" in self.layers:
            x = self.layers["out"](x)
        return x

    def xrec_names(self, prefix):
        """(xrec name, tensor) pairs of this tower under `prefix`."""
        out = []
        for k, lin in self.layers.items():
            out.append((f"{prefix}.{k}.weight", lin.weight))
            out.append((f"{prefix}.{k}.bias", lin.bias))
        for i, a in enumerate(self.acts):
            for n, p in list(a.named_parameters()) + list(a.named_buffers()):
                out.append((f"{prefix}.{i}.act.{n}", p))
        return out


class TargetAttention(nn.Module):
    """xrec's layers::target_attention over jagged histories: s_j = out(MLP([q, k, q - k,
    q * k])), optional per-row softmax, pooled_b = sum_j w_j k_j (zero when empty)."""

    def __init__(self, dim, hidden=(80, 40), act="sigmoid", output="identity", softmax=False):
        super().__init__()
        self.mlp = ActTower(4 * dim, list(hidden), 1, act)
        self.output, self.softmax = output, softmax

    def forward(self, q, keys, offsets):
        B = q.shape[0]
        rows = rows_of(offsets)
        qj = q[rows]
        s = self.mlp(torch.cat([qj, keys, qj - keys, qj * keys], 1))[:, 0]
        if self.output == "sigmoid":
            s = torch.sigmoid(s)
        if self.softmax:
            s = segment_softmax(s, rows, B)
        return q.new_zeros(B, keys.shape[1]).index_add(0, rows, s[:, None] * keys)

    def xrec_names(self, prefix):
        return self.mlp.xrec_names(prefix)


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------
class _Base(nn.Module):
    kind = ""

    def __init__(self, layout, dim):
        super().__init__()
        self.layout, self.dim = layout, dim
        self.embedding = nn.Embedding(layout.total_rows, dim)

    def flat(self, sparse, dense, seqs, seq_weights, skip_seq=()):
        """[non-wide sparse embeddings, sequence fields not in skip_seq pooled, dense]."""
        L = self.layout
        parts = [self.embedding(sparse[:, f]) for f in L.deep_fields()]
        for k, sf in enumerate(L.sequences):
            if k in skip_seq:
                continue
            w = seq_weights[k] if (seq_weights is not None and sf[4]) else None
            parts.append(pool(self.embedding, seqs[k][0], seqs[k][1], sf[3], w))
        if len(L.dense):
            parts.append(dense)
        return torch.cat(parts, 1)

    def loss(self, logits, labels):
        return F.binary_cross_entropy_with_logits(logits, labels)

    def probabilities(self, logits):
        return torch.sigmoid(logits)

    # name map ---------------------------------------------------------------------
    def export_xrec(self):
        """{xrec name: tensor} (views of this module's tensors, running stats as [1, C])."""
        out = {f"{self.kind}.embedding": self.embedding.weight}
        for n, t in self._xrec_pairs():
            out[n] = t
        return out

    def _xrec_pairs(self):
        skip = {"embedding.weight"}
        pairs = []
        for n, t in list(self.named_parameters()) + list(self.named_buffers()):
            if n in skip:
                continue
            pairs.append((self._to_xrec(n), t))
        return pairs

    def _to_xrec(self, torch_name):
        return f"{self.kind}.{torch_name}"

    @torch.no_grad()
    def load_xrec(self, tensors):
        """Copies xrec-named tensors (dict) into this module; every tensor must be present."""
        for name, t in self.export_xrec().items():
            src = tensors[name]
            t.copy_(src.reshape(t.shape).to(t.dtype))

    def grads_xrec(self):
        """{xrec name: gradient} for parameters with a gradient (running stats excluded)."""
        out = {}
        for name, t in self.export_xrec().items():
            if isinstance(t, nn.Parameter) and t.grad is not None:
                out[name] = t.grad
        return out


def _pair_indices(layout, pairs):
    c = [layout.find_sparse(a) for a, _ in pairs]
    h = [layout.find_sequence(b) for _, b in pairs]
    return c, h


class DIN(_Base):
    """xrec models::din. Options as xrec: pairs [(candidate, history)], attention hidden /
    act / output / softmax, mlp hidden / act."""

    kind = "din"

    def __init__(self, layout, dim, pairs, att_hidden=(80, 40), att_act="sigmoid", att_output="identity",
                 att_softmax=False, mlp_hidden=(200, 80), mlp_act="dice"):
        super().__init__(layout, dim)
        self.cand, self.hist = _pair_indices(layout, pairs)
        W = len(pairs) * dim
        other = [k for k in range(len(layout.sequences)) if k not in self.hist]
        rest = (len(layout.deep_fields()) + len(other)) * dim + len(layout.dense)
        self.attention = TargetAttention(W, att_hidden, att_act, att_output, att_softmax)
        self.mlp = ActTower(W + rest, list(mlp_hidden), len(layout.tasks), mlp_act)

    def forward(self, sparse, dense, seqs, seq_weights=None):
        off = seqs[self.hist[0]][1]
        q = torch.cat([self.embedding(sparse[:, c]) for c in self.cand], 1)
        k = torch.cat([self.embedding(seqs[h][0]) for h in self.hist], 1)
        u = self.attention(q, k, off)
        rest = self.flat(sparse, dense, seqs, seq_weights, skip_seq=set(self.hist))
        return self.mlp(torch.cat([u, rest], 1))

    def _xrec_pairs(self):
        return self.attention.xrec_names("din.attention") + self.mlp.xrec_names("din.mlp")


class BST(_Base):
    """xrec models::bst: sequence [candidate, newest .. oldest kept behaviour], padded with
    each table's row 0, learned positions, TransformerEncoderLayer blocks with key padding,
    readout 'candidate' (position 0), 'mean' or 'sum' (over valid positions), MLP."""

    kind = "bst"

    def __init__(self, layout, dim, pairs, max_len=0, blocks=1, heads=1, ff_dim=0, dropout=0.1, act="relu",
                 norm_first=False, eps=1e-5, readout="candidate", mlp_hidden=(1024, 512, 256), mlp_act="relu"):
        super().__init__(layout, dim)
        self.cand, self.hist = _pair_indices(layout, pairs)
        W = len(pairs) * dim
        if max_len == 0:
            max_len = max(layout.sequences[h][2] for h in self.hist)
        self.max_len, self.readout = max_len, readout
        self.positions = nn.Embedding(max_len + 1, W)
        self.blocks = nn.ModuleList([
            nn.TransformerEncoderLayer(W, heads, ff_dim or 4 * W, dropout, act, eps, batch_first=True,
                                       norm_first=norm_first) for _ in range(blocks)])
        other = [k for k in range(len(layout.sequences)) if k not in self.hist]
        rest = (len(layout.deep_fields()) + len(other)) * dim + len(layout.dense)
        self.mlp = ActTower(W + rest, list(mlp_hidden), len(layout.tasks), mlp_act)

    def forward(self, sparse, dense, seqs, seq_weights=None):
        L = self.layout
        off = seqs[self.hist[0]][1]
        B = sparse.shape[0]
        kept = torch.clamp(off[1:] - off[:-1], max=self.max_len)
        T = int(kept.max()) + 1 if B else 1
        t = torch.arange(T)[None, :]
        src = off[1:, None] - t  # position t >= 1 of row b holds values[end_b - t]
        valid = (t >= 1) & (t <= kept[:, None])
        parts = []
        for c, h in zip(self.cand, self.hist):
            pad = L.offsets[L.sequences[h][1]]
            vals = torch.cat([seqs[h][0], torch.tensor([pad])])  # index nnz: the padding row
            ids = vals[torch.where(valid, src, torch.full_like(src, len(vals) - 1))]
            ids[:, 0] = sparse[:, c]
            parts.append(self.embedding(ids))
        x = torch.cat(parts, 2) + self.positions.weight[:T]
        lengths = kept + 1
        pad_mask = torch.arange(T)[None, :] >= lengths[:, None]
        for blk in self.blocks:
            x = blk(x, src_key_padding_mask=pad_mask)
        if self.readout == "candidate":
            z = x[:, 0]
        else:
            valid = (~pad_mask).to(x.dtype)
            z = (x * valid[:, :, None]).sum(1)
            if self.readout == "mean":
                z = z / lengths.to(x.dtype)[:, None]
        rest = self.flat(sparse, dense, seqs, seq_weights, skip_seq=set(self.hist))
        return self.mlp(torch.cat([z, rest], 1))

    def _xrec_pairs(self):
        out = [("bst.positions.weight", self.positions.weight)]
        for i, blk in enumerate(self.blocks):
            for n, p in blk.named_parameters():
                out.append((f"bst.blocks.{i}.{n}", p))
        return out + self.mlp.xrec_names("bst.mlp")


class SharedBottom(_Base):
    kind = "shared_bottom"

    def __init__(self, layout, dim, bottom_hidden=(256, 128), tower_hidden=(64,), act="relu"):
        super().__init__(layout, dim)
        in_f = (len(layout.deep_fields()) + len(layout.sequences)) * dim + len(layout.dense)
        self.bottom = ActTower(in_f, list(bottom_hidden), 0, act)
        self.towers = nn.ModuleList([ActTower(self.bottom.out_features, list(tower_hidden), 1, act)
                                     for _ in layout.tasks])

    def forward(self, sparse, dense, seqs, seq_weights=None):
        h = self.bottom(self.flat(sparse, dense, seqs, seq_weights))
        return torch.cat([t(h) for t in self.towers], 1)

    def _xrec_pairs(self):
        out = self.bottom.xrec_names("shared_bottom.bottom")
        for t, tw in enumerate(self.towers):
            out += tw.xrec_names(f"shared_bottom.tower.{t}")
        return out


class MMoE(_Base):
    kind = "mmoe"

    def __init__(self, layout, dim, experts=4, expert_hidden=(256, 128), gate_bias=False, tower_hidden=(64,),
                 act="relu"):
        super().__init__(layout, dim)
        in_f = (len(layout.deep_fields()) + len(layout.sequences)) * dim + len(layout.dense)
        self.experts = nn.ModuleList([ActTower(in_f, list(expert_hidden), 0, act) for _ in range(experts)])
        self.gates = nn.ModuleList([nn.Linear(in_f, experts, bias=gate_bias) for _ in layout.tasks])
        H = self.experts[0].out_features
        self.towers = nn.ModuleList([ActTower(H, list(tower_hidden), 1, act) for _ in layout.tasks])

    def forward(self, sparse, dense, seqs, seq_weights=None):
        x = self.flat(sparse, dense, seqs, seq_weights)
        e = torch.stack([ex(x) for ex in self.experts], 1)  # [B, E, H]
        out = []
        for g, tw in zip(self.gates, self.towers):
            w = torch.softmax(g(x), 1)
            out.append(tw((w[:, :, None] * e).sum(1)))
        return torch.cat(out, 1)

    def _xrec_pairs(self):
        out = []
        for k, ex in enumerate(self.experts):
            out += ex.xrec_names(f"mmoe.expert.{k}")
        for t, g in enumerate(self.gates):
            out.append((f"mmoe.gate.{t}.weight", g.weight))
            if g.bias is not None:
                out.append((f"mmoe.gate.{t}.bias", g.bias))
        for t, tw in enumerate(self.towers):
            out += tw.xrec_names(f"mmoe.tower.{t}")
        return out


def esmm_loss(logits, labels):
    """ESMM's entire-space loss, mean over rows of BCE(pCTR, click) + BCE(pCTR pCVR, click
    purchase), in log space: with u = -a, v = -c, -log p = sp(u) + sp(v) and
    -log(1 - p) = sp(u) + sp(v) - logsumexp(u, v, u + v)."""
    a, c = logits[:, 0], logits[:, 1]
    click, buy = labels[:, 0], labels[:, 0] * labels[:, 1]
    ctr = F.binary_cross_entropy_with_logits(a, click, reduction="none")
    u, v = -a, -c
    lse = torch.logsumexp(torch.stack([u, v, u + v], 1), 1)
    ctcvr = F.softplus(u) + F.softplus(v) - (1 - buy) * lse
    return (ctr + ctcvr).mean()


class ESMM(_Base):
    kind = "esmm"

    def __init__(self, layout, dim, tower_hidden=(256, 128), act="relu"):
        super().__init__(layout, dim)
        assert len(layout.tasks) == 2
        in_f = (len(layout.deep_fields()) + len(layout.sequences)) * dim + len(layout.dense)
        self.ctr = ActTower(in_f, list(tower_hidden), 1, act)
        self.cvr = ActTower(in_f, list(tower_hidden), 1, act)

    def forward(self, sparse, dense, seqs, seq_weights=None):
        x = self.flat(sparse, dense, seqs, seq_weights)
        return torch.cat([self.ctr(x), self.cvr(x)], 1)

    def loss(self, logits, labels):
        return esmm_loss(logits, labels)

    def probabilities(self, logits):
        """[pCTR, pCVR]; pCTCVR = their product."""
        return torch.sigmoid(logits)

    def _xrec_pairs(self):
        return self.ctr.xrec_names("esmm.ctr") + self.cvr.xrec_names("esmm.cvr")
