#!/usr/bin/env python3
"""RecBole 1.2.1 on ml-100k with rank_cf's split and protocol, for the models it has: Pop,
ItemKNN, BPR (MF), and NeuMF in its three forms (GMF only, MLP only, both).

Split and protocol (as eval/rank_cf.cpp): all 100,000 ratings as implicit feedback; per user
the latest interaction (by timestamp) is the test item, the rest train (RecBole's leave-one-
out 'test_only', order 'TO'); the test item ranked among 99 uniformly sampled items the user
never interacted with (mode 'uni99'), HR@10 and NDCG@10. RecBole draws its own 99 negatives
(not rank_cf's candidate sets) and orders timestamp ties its own way; everything else
matches. No validation split and no early stopping: fixed epochs, as rank_cf.
Hyper-parameters follow rank_cf: batch 256, Adam 1e-3, 20 epochs; BPR dim 64 with one
negative (RecBole's BPR has no L2); NeuMF 4 negatives, GMF 16, MLP embeddings 32, tower
32-16, dropout 0.

  python3 eval/recbole_ml100k.py [--data ../shared/data] [--seeds 1,2,3,4,5] [--models Pop,ItemKNN,BPR,GMF,MLP,NeuMF]
"""
import argparse
import logging
import math
import os
import sys
import tempfile
import time

import warnings

import numpy as np

import torch  # noqa: F401  (RecBole imports it; imported first for a clear error)

# RecBole 1.2.1 aliases NumPy names that NumPy 2 removed (Config.compatibility_settings reads
# np.float_, np.complex_, np.unicode_): restore them before it runs.
for _old, _new in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
    if not hasattr(np, _old):
        setattr(np, _old, _new)
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer, init_seed


def write_atomic(data_dir, out_dir):
    os.makedirs(os.path.join(out_dir, "ml-100k"), exist_ok=True)
    path = os.path.join(out_dir, "ml-100k", "ml-100k.inter")
    with open(os.path.join(data_dir, "ml-100k", "u.data")) as f, open(path, "w") as g:
        g.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for line in f:
            u, i, _, t = line.split()
            g.write(f"{u}\t{i}\t{t}\n")


VARIANTS = {
    "Pop": ("Pop", {}),
    "ItemKNN": ("ItemKNN", {"k": 100, "shrink": 0.0}),
    "BPR": ("BPR", {"embedding_size": 64, "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}}),
    "GMF": ("NeuMF", {"mf_train": True, "mlp_train": False}),
    "MLP": ("NeuMF", {"mf_train": False, "mlp_train": True}),
    "NeuMF": ("NeuMF", {"mf_train": True, "mlp_train": True}),
}
NEUMF = {"mf_embedding_size": 16, "mlp_embedding_size": 32, "mlp_hidden_size": [32, 16], "dropout_prob": 0.0,
         "use_pretrain": False, "train_neg_sample_args": {"distribution": "uniform", "sample_num": 4}}


def run(variant, seed, root, epochs):
    model, extra = VARIANTS[variant]
    cfg = {
        "data_path": root, "checkpoint_dir": os.path.join(root, "saved"), "use_gpu": False, "seed": seed,
        "reproducibility": True, "show_progress": False, "state": "WARNING",
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "test_only"}, "order": "TO", "group_by": "user", "mode": "uni99"},
        "metrics": ["Hit", "NDCG"], "topk": [10], "valid_metric": "NDCG@10",
        "epochs": epochs, "train_batch_size": 256, "learning_rate": 1e-3, "eval_batch_size": 4096,
    }
    if model == "NeuMF":
        cfg.update(NEUMF)
    cfg.update(extra)
    config = Config(model=model, dataset="ml-100k", config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    logging.getLogger().setLevel(logging.WARNING)
    dataset = create_dataset(config)
    train_data, _valid, test_data = data_preparation(config, dataset)
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    trainer.fit(train_data, valid_data=None, saved=False, show_progress=False)
    res = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    return float(res["hit@10"]), float(res["ndcg@10"])


def main():
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("XREC_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", "..",
                                                                                     "shared", "data")))
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--models", default="Pop,ItemKNN,BPR,GMF,MLP,NeuMF")
    ap.add_argument("--epochs", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in a.seeds.split(",")]
    with tempfile.TemporaryDirectory() as root:
        write_atomic(a.data, root)
        print("protocol: sampled ranking, the target among 99 uniform negatives (RecBole's own draw of items the user "
              "has not seen); split: leave-latest-out (RecBole LS test_only, order TO); ml-100k, RecBole 1.2.1")
        print("| model (RecBole) | HR@10 | NDCG@10 |\n|---|---|---|")
        for v in a.models.split(","):
            hr, nd = [], []
            for s in seeds:
                t0 = time.time()
                h, n = run(v, s, root, a.epochs)
                hr.append(h)
                nd.append(n)
                print(f"  {v} seed {s}: HR@10 {h:.4f} NDCG@10 {n:.4f} ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
            se = lambda x: np.std(x, ddof=1) / math.sqrt(len(x)) if len(x) > 1 else 0.0
            print(f"| {v} | {np.mean(hr):.4f} ± {se(hr):.4f} | {np.mean(nd):.4f} ± {se(nd):.4f} |", flush=True)


if __name__ == "__main__":
    main()
