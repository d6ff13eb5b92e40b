"""PyTorch peer of bench/top_k.cpp (imported by torch_peer.py): top-K by inner product.

  topk_infer/n<n>/d<d>/k<k>              torch.topk(items @ q, k): items [n, d], q [d]
  topk_batch_infer/q<m>/n<n>/d<d>/k<k>   torch.topk(Q @ items.T, k, dim=1): Q [m, d]

fp32, standard normal data, one thread (the case is *_infer), under torch.inference_mode.
torch.topk returns the k largest sorted; ties between equal scores may come in any order
(xrec breaks them by the smaller id), which does not change the work timed.
"""
import re

import torch

TOPK_KINDS = {"topk_infer", "topk_batch_infer"}


def topk_case(kind, args, threads):
    """(step, threads, infer) for a top-K case."""
    if kind == "topk_infer":
        m = re.fullmatch(r"n(\d+)/d(\d+)/k(\d+)", args)
        if not m:
            raise ValueError(f"bad topk case arguments '{args}'")
        n, d, k = map(int, m.groups())
        items = torch.randn(n, d)
        q = torch.randn(d)

        def step():
            return torch.topk(items @ q, k)

        return step, threads, True
    m = re.fullmatch(r"q(\d+)/n(\d+)/d(\d+)/k(\d+)", args)
    if not m:
        raise ValueError(f"bad topk_batch case arguments '{args}'")
    b, n, d, k = map(int, m.groups())
    items = torch.randn(n, d)
    q = torch.randn(b, d)

    def step():
        return torch.topk(q @ items.T, k, dim=1)

    return step, threads, True
