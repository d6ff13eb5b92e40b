#!/usr/bin/env python3
"""DeepCTR-Torch baselines on xrec's Criteo split (the peer library users know).

Trains DeepCTR-Torch's DeepFM, WDL (wide & deep), NFM, DCN, DCN-M (DCN-V2) and AutoInt on
../shared/data/criteo/criteo_train.tsv and reports AUC and logloss on dev+test, mean and
standard error over seeds. Preprocessing follows DeepCTR's own Criteo example (sparse
fields label-encoded, dense fields min-max scaled, missing values '-1' / 0), fitted on the
training file only; values unseen in training map to one extra index. Hyper-parameters are
the ones the eval preset uses for xrec: embedding 8, DNN 200-200 ReLU, Adam 1e-3, batch 256,
10 epochs, no dropout; DeepCTR's defaults otherwise (init_std 1e-4, l2 1e-5 on embeddings).

  python3 eval/deepctr_criteo.py [--data DIR] [--seeds 5] [--epochs 10] [--json out.json]
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import log_loss, roc_auc_score

from deepctr_torch.inputs import DenseFeat, SparseFeat, get_feature_names
from deepctr_torch.models import DCN, DCNMix, NFM, WDL, AutoInt, DeepFM

DENSE = [f"I{i}" for i in range(1, 14)]
SPARSE = [f"C{i}" for i in range(1, 27)]
COLS = ["label"] + DENSE + SPARSE


def load(data_dir):
    read = lambda n: pd.read_csv(os.path.join(data_dir, n), sep="\t", header=None, names=COLS,
                                 dtype={c: str for c in SPARSE})
    train, dev, test = read("criteo_train.tsv"), read("criteo_dev.tsv"), read("criteo_test.tsv")
    evalset = pd.concat([dev, test], ignore_index=True)
    for df in (train, evalset):
        df[SPARSE] = df[SPARSE].fillna("-1")
        df[DENSE] = df[DENSE].fillna(0).astype("float64")
    lo, hi = train[DENSE].min(), train[DENSE].max()
    span = (hi - lo).replace(0, 1)
    vocab = {}
    for df in (train, evalset):
        df[DENSE] = ((df[DENSE] - lo) / span).clip(0, 1)
    for c in SPARSE:
        cats = {v: i + 1 for i, v in enumerate(sorted(train[c].unique()))}  # 0 = unseen
        vocab[c] = len(cats) + 1
        for df in (train, evalset):
            df[c] = df[c].map(cats).fillna(0).astype("int64")
    return train, evalset, vocab


MODELS = {
    "deepfm": lambda l, d, s: DeepFM(l, d, dnn_hidden_units=(200, 200), seed=s),
    "wide_deep": lambda l, d, s: WDL(l, d, dnn_hidden_units=(200, 200), seed=s),
    "nfm": lambda l, d, s: NFM(l, d, dnn_hidden_units=(200, 200), seed=s),
    "dcn": lambda l, d, s: DCN(l, d, cross_num=3, dnn_hidden_units=(200, 200), seed=s),
    "dcn_v2": lambda l, d, s: DCN(l, d, cross_num=3, cross_parameterization="matrix", dnn_hidden_units=(200, 200), seed=s),
    "autoint": lambda l, d, s: AutoInt(l, d, att_layer_num=3, att_head_num=2, dnn_hidden_units=(200, 200), seed=s),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "criteo"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    train, evalset, vocab = load(a.data)
    cols = [SparseFeat(c, vocabulary_size=vocab[c], embedding_dim=8) for c in SPARSE] + [DenseFeat(c, 1) for c in DENSE]
    names = get_feature_names(cols)
    xtr = {n: train[n].values for n in names}
    xev = {n: evalset[n].values for n in names}
    out = {}
    print(f"DeepCTR-Torch {__import__('deepctr_torch').__version__} on Criteo: train {len(train)} rows, dev+test {len(evalset)} rows, "
          f"{a.epochs} epochs, {a.seeds} seeds")
    print(f"{'model':<10} {'AUC mean':>9} {'± se':>7} {'logloss':>8} {'± se':>7}")
    for name in a.models.split(","):
        aucs, lls = [], []
        for seed in range(1, a.seeds + 1):
            torch.manual_seed(seed)
            np.random.seed(seed)
            m = MODELS[name](cols, cols, seed)
            m.compile("adam", "binary_crossentropy")
            m.fit(xtr, train["label"].values, batch_size=a.batch, epochs=a.epochs, verbose=0, shuffle=True)
            p = m.predict(xev, batch_size=1024).ravel()
            aucs.append(roc_auc_score(evalset["label"].values, p))
            lls.append(log_loss(evalset["label"].values, np.clip(p, 1e-7, 1 - 1e-7)))
        se = lambda v: float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
        out[name] = {"auc": aucs, "logloss": lls}
        print(f"{name:<10} {np.mean(aucs):9.4f} {se(aucs):7.4f} {np.mean(lls):8.4f} {se(lls):7.4f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
