"""The paper-scale config (`studies/configs/paper.yaml`, meant for a GPU) on one TCMA set: the fit with
its mean estimate, the encoder alone, softimpute on the same masks, and the paper's own inference
(the median of n draws, each `timesteps` reverse steps per AR step) on the same fitted model.

The draws are what the paper scores; the mean estimate is what this project scores (MODEL.md). Both
come from one fitted network here, so their difference is the inference choice alone. Draws stop once
--draw-budget-s has passed and the row says how many were made.

    python tests/bench/paper.py --data stad [--seed 0] [--draws 5] [--draw-budget-s 120] [--set use_metadata=false]
        [--tcma DIR] [--no-pretrain]

Prints one JSON object; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from depmicro.core.data import load_dataset
from depmicro.core.data.baselines import impute_with_baseline
from depmicro.core.data.evaluation import evaluate, make_split, training_view
from depmicro.core.model.config import load_config
from depmicro.core.imputer import keep_observed
from depmicro.core.train import fit

ROOT = Path(__file__).resolve().parents[2]
SETS = ("stad", "coad", "hnsc")
M = "pcc_per_microbe"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="stad", choices=SETS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=str(ROOT / "studies" / "configs" / "paper.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--tcma", default=str(ROOT.parent / "shared" / "data" / "tcma"))
    ap.add_argument("--no-pretrain", action="store_true")
    ap.add_argument("--draws", type=int, default=5, help="draws for the paper's median (0: skip)")
    ap.add_argument("--draw-budget-s", type=float, default=120.0, help="stop drawing once this many seconds have passed")
    a = ap.parse_args()
    tcma = Path(a.tcma)
    meta = tcma / f"{a.data}_metadata.tsv"
    ds = load_dataset(tcma / f"{a.data}.h5ad", metadata=meta if meta.exists() else None)
    others = [] if a.no_pretrain else [load_dataset(tcma / f"{s}.h5ad") for s in SETS if s != a.data]
    cfg = load_config(a.config, [*a.set, f"seed={a.seed}"])
    Y = ds.normalized
    split = make_split(Y, seed=a.seed, test_ratio=cfg.test_ratio, val_ratio=cfg.val_ratio)
    view, obs = training_view(Y, split), split.observed
    row: dict = {"data": a.data, "seed": a.seed, "config": Path(a.config).name, "overrides": a.set,
                 "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    filled, sec = impute_with_baseline("softimpute", Y, obs, seed=a.seed)
    row["softimpute"] = {"val": round(evaluate(Y, filled, split.val)[M], 4), "test": round(evaluate(Y, filled, split.test)[M], 4)}
    print(json.dumps(row), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    res = fit(cfg, ds, split, pretrain=others)
    row["fit_s"] = round(time.perf_counter() - t0, 1)
    row["epochs"] = res.epochs
    row["steps"] = res.history[-1].get("step") if res.history else None
    row["best_epoch"] = max(res.history, key=lambda h: h["val"].get(M, -9))["epoch"] if any(h["val"] for h in res.history) else None
    row["mean"] = {"val": round(res.val[M], 4), "test": round(res.test[M], 4)}
    imp = res.imputer
    enc = imp.encoder_impute(view, obs)
    row["encoder"] = {"val": round(evaluate(Y, enc, split.val)[M], 4), "test": round(evaluate(Y, enc, split.test)[M], 4)}
    metadata = ds.metadata_text() if cfg.use_metadata else None
    t = time.perf_counter()
    imp.impute(view, obs, metadata)
    row["mean_impute_s"] = round(time.perf_counter() - t, 2)
    print(json.dumps(row), file=sys.stderr, flush=True)
    draws, t = [], time.perf_counter()
    for i in range(a.draws):
        draws.append(imp.sample(view, obs, 1, metadata, seed=a.seed + i)[0])
        if time.perf_counter() - t > a.draw_budget_s:
            break
    if draws:
        med = keep_observed(Y, obs, np.median(draws, axis=0))
        row["draws"] = {"n": len(draws), "sampling": cfg.sampling, "timesteps": cfg.timesteps, "seconds": round(time.perf_counter() - t, 1),
                        "median_val": round(evaluate(Y, med, split.val)[M], 4), "median_test": round(evaluate(Y, med, split.test)[M], 4),
                        "one_draw_test": round(evaluate(Y, keep_observed(Y, obs, draws[0]), split.test)[M], 4)}
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
