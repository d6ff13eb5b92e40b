"""PyTorch peers of xrec's sequential recommenders (include/xrec/models/{sasrec,gru4rec}.hpp)
and of loss::bpr_max (include/xrec/loss/bpr_max.hpp), written from the same formulas, for
the parity fixtures (tests/fixtures/gen_seqrec_model_fixtures.py) and the training-parity
runs (eval/seq_parity.py).

Name map (xrec checkpoint name <-> this module's state_dict key): xrec "<name>.<key>" ==
torch "<key>" for every parameter, with <name> "sasrec" or "gru4rec" (the options' name).
Transformer blocks are torch.nn.TransformerEncoderLayer(norm_first=True) (run as such for
block="pre_norm", or through their sub-modules in the SASRec reference code's form for
block="reference") and the GRU is torch.nn.GRU, so their keys are PyTorch's own:
  sasrec:  item_emb [n, D], pos_emb.weight [T, D], blocks.<l>.self_attn.in_proj_weight ...,
           last_norm.weight / .bias
  gru4rec: item_emb [n, E] (only with a separate input embedding), gru.weight_ih_l<l> ...,
           out_emb [n, H], out_bias [n]
load_xrec(tensors) / export_xrec() / grads_xrec() apply the map.

Padding: item id -1. SASRec inputs are left-padded [B, T]. xrec masks padded keys and
gives a query with no valid key a zero attention output; PyTorch gives NaN there, which
would reach real positions through the next block's values (0 * NaN). The peer lets such
a query attend to itself instead: its own output differs from xrec's but is never read by
a real position (padded keys are masked) nor by the loss, so every real output and every
gradient agree.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class _Named(nn.Module):
    prefix = ""

    def export_xrec(self):
        return {f"{self.prefix}.{n}": p for n, p in self.named_parameters()}

    @torch.no_grad()
    def load_xrec(self, tensors):
        for name, p in self.export_xrec().items():
            p.copy_(tensors[name].reshape(p.shape).to(p.dtype))

    def grads_xrec(self):
        return {n: p.grad for n, p in self.export_xrec().items() if p.grad is not None}


class SASRec(_Named):
    """xrec::models::sasrec: transformer blocks (feed-forward width D, ReLU), final layer norm,
    item embedding shared with the prediction layer, input scaled by sqrt(D). block:
    "pre_norm" (a stock TransformerEncoderLayer(norm_first=True)) or "reference" (the SASRec
    reference code's block, written here from its formula over the same sub-modules:
    q = norm1(x); h = q + self_attn(q, x, x); n = norm2(h); y = n + dropout(FF(n)))."""

    prefix = "sasrec"

    def __init__(self, n_items, dim=64, max_len=50, blocks=2, heads=1, dropout=0.5, eps=1e-8, block="pre_norm"):
        super().__init__()
        assert block in ("pre_norm", "reference"), block
        self.block = block
        self.n_items, self.dim, self.max_len, self.heads, self.dropout = n_items, dim, max_len, heads, dropout
        self.item_emb = nn.Parameter(torch.empty(n_items, dim))
        nn.init.xavier_normal_(self.item_emb)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList([
            nn.TransformerEncoderLayer(dim, heads, dim, dropout, activation="relu", layer_norm_eps=eps,
                                       batch_first=True, norm_first=True) for _ in range(blocks)])
        self.last_norm = nn.LayerNorm(dim, eps)

    def encode(self, ids):
        """ids LongTensor [B, T], -1 = padding -> (H [B, T - first, D], first): leading columns
        that are padding in every row are skipped (as xrec does; the same outputs), positions
        keep their absolute index."""
        cols = (ids >= 0).any(0).nonzero()
        first = int(cols[0]) if len(cols) else ids.shape[1] - 1
        end = ids.shape[1]
        ids = ids[:, first:]
        B, T = ids.shape
        valid = ids >= 0
        x = F.embedding(ids.clamp(min=0), self.item_emb) * valid[..., None].to(self.item_emb.dtype)
        x = x * math.sqrt(self.dim) + self.pos_emb.weight[first:end][None]
        x = F.dropout(x, self.dropout, self.training)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        allow = causal[None] & valid[:, None, :]
        dead = ~allow.any(-1)
        allow = allow | (dead[..., None] & torch.eye(T, dtype=torch.bool)[None])
        mask = (~allow).repeat_interleave(self.heads, 0)  # True = may not attend
        for blk in self.blocks:
            x = blk(x, src_mask=mask) if self.block == "pre_norm" else self._reference_block(blk, x, mask)
        return self.last_norm(x), first

    def _reference_block(self, blk, x, mask):
        q = blk.norm1(x)
        h = q + blk.self_attn(q, x, x, attn_mask=mask, need_weights=False)[0]
        n = blk.norm2(h)
        p = self.dropout if self.training else 0.0
        ff = blk.linear2(F.dropout(F.relu(blk.linear1(n)), p, self.training))
        return n + F.dropout(ff, p, self.training)

    def state(self, ids):
        return self.encode(ids)[0][:, -1]

    def scores(self, states):
        return states @ self.item_emb.t()

    def bce_loss(self, ids, targets, negatives):
        h, first = self.encode(ids)
        targets, negatives = targets[:, first:], negatives[:, first:]
        v = targets >= 0
        hv = h[v]
        lp = (hv * self.item_emb[targets[v]]).sum(-1)
        ln = (hv * self.item_emb[negatives[v]]).sum(-1)
        return F.binary_cross_entropy_with_logits(lp, torch.ones_like(lp)) + \
            F.binary_cross_entropy_with_logits(ln, torch.zeros_like(ln))

    def ce_loss(self, ids, targets):
        h, first = self.encode(ids)
        targets = targets[:, first:]
        v = targets >= 0
        return F.cross_entropy(self.scores(h[v]), targets[v])


class GRU4Rec(_Named):
    """xrec::models::gru4rec: one step of a torch.nn.GRU over the item's input embedding (the
    output embedding when embedding == 0), scores <o, out_emb[j]> + out_bias[j]."""

    prefix = "gru4rec"

    def __init__(self, n_items, hidden=100, layers=1, embedding=0, dropout_embed=0.0, dropout_hidden=0.0):
        super().__init__()
        self.n_items, self.hidden, self.layers, self.embedding = n_items, hidden, layers, embedding
        self.dropout_embed, self.dropout_hidden = dropout_embed, dropout_hidden
        if embedding > 0:
            self.item_emb = nn.Parameter(torch.empty(n_items, embedding))
            nn.init.xavier_uniform_(self.item_emb)
        self.gru = nn.GRU(embedding if embedding > 0 else hidden, hidden, layers)
        self.out_emb = nn.Parameter(torch.empty(n_items, hidden))
        nn.init.xavier_uniform_(self.out_emb)
        self.out_bias = nn.Parameter(torch.zeros(n_items))

    def step(self, items, h):
        """items LongTensor [B], h [layers, B, H] -> (new h [layers, B, H], out [B, H])."""
        table = self.item_emb if self.embedding > 0 else self.out_emb
        x = F.dropout(table[items], self.dropout_embed, self.training)
        _, hn = self.gru(x[None], h)
        return hn, F.dropout(hn[-1], self.dropout_hidden, self.training)

    def scores(self, out, candidates):
        return out @ self.out_emb[candidates].t() + self.out_bias[candidates]

    def score_all(self, out):
        return out @ self.out_emb.t() + self.out_bias


def bpr_max(scores, targets, reg):
    """xrec::loss::bpr_max: mean over rows of -log(sum_j s_j sigmoid(x_t - x_j) + 1e-24)
    + reg sum_j s_j x_j^2, s = softmax over the columns other than the target's."""
    pos = F.one_hot(targets, scores.shape[1]).bool()
    s = torch.softmax(scores.masked_fill(pos, float("-inf")), 1)
    xt = scores.gather(1, targets[:, None])
    S = (s * torch.sigmoid(xt - scores)).sum(1)
    R = (s * scores ** 2).sum(1)
    return (-torch.log(S + 1e-24) + reg * R).mean()
