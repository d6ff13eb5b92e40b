"""PyTorch peers of xrec's collaborative-filtering models (include/xrec/models/{mf,ncf,
two_tower}.hpp) and of the in-batch softmax loss (include/xrec/loss/sampled_softmax.hpp),
written to compute exactly what the C++ code computes.

Used by tests/fixtures/gen_cf_model_fixtures.py (parity fixtures, float64) and by the
training-parity run eval/cf_parity.py; import with tests/peers on sys.path:

    import cf_models as cf
    m = cf.NeuMF(n_users, n_items, gmf_dim=8, mlp_dim=16, hidden=(16, 8))
    cf.load_xrec(m, tensors, prefix="neumf")     # tensors: {xrec name: torch.Tensor}
    logits = m(users, items)                      # users, items [n] int64 -> [n]

Every model has score(users, items) (= forward) -> logits [n]; MF and TwoTower also have
user_vectors / item_vectors ([n, D]) for dot-product retrieval and the in-batch softmax.
sparse=True makes the embedding lookups emit sparse gradients (for torch.optim.SparseAdam,
xrec's lazy_adam); the default dense gradients are what the fixtures compare.

Name map (one to one): the xrec name of a tensor is "<prefix>." + its state_dict key, with
the ".weight" suffix of embedding tables dropped (xrec tables carry no suffix):
  mf:        <p>.user [U, D], <p>.item [I, D], <p>.item_bias [I, 1] (item_bias=True)
  gmf:       <p>.user, <p>.item [., D], <p>.out.weight [1, D], <p>.out.bias [1]
  ncf_mlp:   <p>.user, <p>.item [., E], <p>.tower.<l>.weight / .bias, <p>.out.weight / .bias
  neumf:     <p>.gmf.user, <p>.gmf.item, <p>.mlp.user, <p>.mlp.item, <p>.mlp.tower.<l>.weight /
             .bias, <p>.out.weight [1, D_G + H_L], <p>.out.bias [1]
  two_tower: <p>.user, <p>.item [., id_dim], <p>.user_features / <p>.item_features
             [rows, feature_dim] (mean bags), <p>.user_tower.<l>.weight / .bias,
             <p>.user_tower.out.weight / .bias (likewise item_tower)
Linear weights are [out, in] on both sides.
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class _MLP(nn.Module):
    """xrec's layers::mlp: linear "<l>" + ReLU per hidden width, then an optional linear
    "out" (submodules named "0", "1", ..., "out", so the state_dict keys match xrec's names)."""

    def __init__(self, d_in: int, hidden: Sequence[int], out: int = 0):
        super().__init__()
        w = d_in
        for i, h in enumerate(hidden):
            self.add_module(str(i), nn.Linear(w, h))
            w = h
        self.n_hidden = len(hidden)
        self.has_out = out > 0
        if self.has_out:
            self.add_module("out", nn.Linear(w, out))
            w = out
        self.out_features = w

    def forward(self, x):
        for i in range(self.n_hidden):
            x = F.relu(getattr(self, str(i))(x))
        if self.has_out:
            x = getattr(self, "out")(x)
        return x


def _emb(rows, dim, sparse):
    e = nn.Embedding(rows, dim, sparse=sparse)
    nn.init.normal_(e.weight, 0, 0.01)
    return e


class MF(nn.Module):
    def __init__(self, n_users, n_items, dim=64, item_bias=False, sparse=False):
        super().__init__()
        self.user = _emb(n_users, dim, sparse)
        self.item = _emb(n_items, dim, sparse)
        self.item_bias = None
        if item_bias:
            self.item_bias = nn.Embedding(n_items, 1, sparse=sparse)
            nn.init.zeros_(self.item_bias.weight)

    def user_vectors(self, users):
        return self.user(users)

    def item_vectors(self, items):
        return self.item(items)

    def forward(self, users, items):
        s = (self.user(users) * self.item(items)).sum(-1)
        if self.item_bias is not None:
            s = s + self.item_bias(items).squeeze(-1)
        return s

    score = forward


class GMF(nn.Module):
    def __init__(self, n_users, n_items, dim=8, output=True, sparse=False):
        super().__init__()
        self.user = _emb(n_users, dim, sparse)
        self.item = _emb(n_items, dim, sparse)
        self.out = nn.Linear(dim, 1) if output else None

    def vector(self, users, items):
        return self.user(users) * self.item(items)

    def forward(self, users, items):
        return self.out(self.vector(users, items)).squeeze(-1)

    score = forward


class NCFMLP(nn.Module):
    def __init__(self, n_users, n_items, dim=16, hidden=(16, 8), output=True, sparse=False):
        super().__init__()
        self.user = _emb(n_users, dim, sparse)
        self.item = _emb(n_items, dim, sparse)
        self.tower = _MLP(2 * dim, hidden)
        self.out = nn.Linear(self.tower.out_features, 1) if output else None

    def vector(self, users, items):
        return self.tower(torch.cat([self.user(users), self.item(items)], dim=-1))

    def forward(self, users, items):
        return self.out(self.vector(users, items)).squeeze(-1)

    score = forward


class NeuMF(nn.Module):
    def __init__(self, n_users, n_items, gmf_dim=8, mlp_dim=16, hidden=(16, 8), sparse=False):
        super().__init__()
        self.gmf = GMF(n_users, n_items, gmf_dim, output=False, sparse=sparse)
        self.mlp = NCFMLP(n_users, n_items, mlp_dim, hidden, output=False, sparse=sparse)
        self.out = nn.Linear(gmf_dim + self.mlp.tower.out_features, 1)

    def forward(self, users, items):
        z = torch.cat([self.gmf.vector(users, items), self.mlp.vector(users, items)], dim=-1)
        return self.out(z).squeeze(-1)

    score = forward

    @torch.no_grad()
    def init_from(self, g: GMF, m: NCFMLP, alpha=0.5):
        """The paper's pretraining: embeddings and tower copied, h = [a h_G, (1-a) h_M]."""
        self.gmf.user.weight.copy_(g.user.weight)
        self.gmf.item.weight.copy_(g.item.weight)
        self.mlp.user.weight.copy_(m.user.weight)
        self.mlp.item.weight.copy_(m.item.weight)
        self.mlp.tower.load_state_dict(m.tower.state_dict())
        self.out.weight.copy_(torch.cat([alpha * g.out.weight, (1 - alpha) * m.out.weight], dim=1))
        self.out.bias.copy_(alpha * g.out.bias + (1 - alpha) * m.out.bias)


class TwoTower(nn.Module):
    """user_features / item_features: (offsets [n_ids + 1], values) CSR int64 tensors and the
    feature vocabulary size, or None."""

    def __init__(self, n_users, n_items, id_dim=32, feature_dim=0, user_hidden=(64,), user_out=32,
                 item_hidden=(64,), item_out=32, user_features=None, item_features=None, sparse=False):
        super().__init__()
        fd = feature_dim if feature_dim > 0 else id_dim
        self.user = _emb(n_users, id_dim, sparse)
        self.item = _emb(n_items, id_dim, sparse)
        self.uf = user_features
        self.itf = item_features
        self.user_features = nn.EmbeddingBag(user_features[2], fd, mode="mean", sparse=sparse,
                                           include_last_offset=True) if user_features else None
        self.item_features = nn.EmbeddingBag(item_features[2], fd, mode="mean", sparse=sparse,
                                           include_last_offset=True) if item_features else None
        self.user_tower = _MLP(id_dim + (fd if user_features else 0), user_hidden, user_out)
        self.item_tower = _MLP(id_dim + (fd if item_features else 0), item_hidden, item_out)

    @staticmethod
    def _bag(bag, csr, ids):
        """Mean bag over the features of each id (the CSR rows of `ids`, gathered)."""
        off, val, _ = csr
        starts, lens = off[ids], off[ids + 1] - off[ids]
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lens, 0)])
        total = int(offsets[-1])
        pos = torch.arange(total) - torch.repeat_interleave(offsets[:-1], lens) + torch.repeat_interleave(starts, lens)
        return bag(val[pos], offsets)

    def user_vectors(self, users):
        x = self.user(users)
        if self.user_features is not None:
            x = torch.cat([x, self._bag(self.user_features, self.uf, users)], dim=-1)
        return self.user_tower(x)

    def item_vectors(self, items):
        x = self.item(items)
        if self.item_features is not None:
            x = torch.cat([x, self._bag(self.item_features, self.itf, items)], dim=-1)
        return self.item_tower(x)

    def forward(self, users, items):
        return (self.user_vectors(users) * self.item_vectors(items)).sum(-1)

    score = forward


def in_batch_softmax(u, v, log_q: Optional[torch.Tensor] = None, temperature=1.0,
                     item_ids: Optional[torch.Tensor] = None):
    """loss::in_batch_softmax: mean_i [logsumexp_j s_ij - s_ii], s_ij = <u_i, v_j>/tau - log q_j,
    columns j != i holding row i's item (accidental hits) removed when item_ids is given."""
    s = u @ v.t() / temperature
    if log_q is not None:
        s = s - log_q.unsqueeze(0)
    if item_ids is not None:
        hit = item_ids.unsqueeze(0) == item_ids.unsqueeze(1)
        hit.fill_diagonal_(False)
        s = s.masked_fill(hit, float("-inf"))
    return F.cross_entropy(s, torch.arange(u.shape[0]))


def _is_table(module: nn.Module, key: str) -> bool:
    mod = module
    parts = key.split(".")
    for p in parts[:-1]:
        mod = getattr(mod, p)
    return isinstance(mod, (nn.Embedding, nn.EmbeddingBag))


def xrec_name(module: nn.Module, prefix: str, key: str) -> str:
    if _is_table(module, key):
        key = key[: -len(".weight")]
    return f"{prefix}.{key}"


def to_xrec(module: nn.Module, prefix: str):
    """{xrec name: tensor} of the peer's parameters."""
    return {xrec_name(module, prefix, k): t.detach().clone().contiguous() for k, t in module.state_dict().items()}


def load_xrec(module: nn.Module, tensors, prefix: str):
    """Loads {xrec name: tensor} (e.g. an xrec checkpoint); every peer tensor must be there."""
    sd = {}
    for k, t in module.state_dict().items():
        name = xrec_name(module, prefix, k)
        if name not in tensors:
            raise KeyError(f"load_xrec: xrec tensor '{name}' (peer key '{k}') is missing")
        src = tensors[name]
        sd[k] = src.reshape(t.shape).to(t.dtype)
    module.load_state_dict(sd)


def grads_xrec(module: nn.Module, prefix: str):
    """{xrec name: gradient} (dense) of the peer's parameters after backward."""
    out = {}
    for k, p in module.named_parameters():
        g = p.grad
        if g is not None and g.is_sparse:
            g = g.to_dense()
        out[xrec_name(module, prefix, k)] = (torch.zeros_like(p) if g is None else g).detach().clone().contiguous()
    return out
