"""Sampler cost and quality: one trained model, then imputation time and test pcc_per_microbe for
full vs fractional n in {2, 4, 20} vs adaptive, on one set, in one run. Prints JSON.

    python tests/bench/sampling.py [--set stad] [--seed 0] [--config studies/configs/tiny.yaml] [--set-cfg key=value ...]
"""
from __future__ import annotations

import dataclasses

import argparse
import json
import sys
import time
from pathlib import Path

from depmicro.core.model.config import load_config
from depmicro.core.data import load_dataset
from depmicro.core.data.evaluation import evaluate, make_split, training_view
from depmicro.core.train import fit

REPO = Path(__file__).resolve().parents[2]
TCMA = REPO.parent / "shared" / "data" / "tcma"
MODES = (("full", 1), ("fractional", 2), ("fractional", 4), ("fractional", 20), ("adaptive", 2))


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="stad")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", type=Path, default=REPO / "studies" / "configs" / "tiny.yaml")
    ap.add_argument("--set-cfg", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    if not TCMA.exists():
        sys.exit(f"TCMA data absent: {TCMA}")
    import torch

    cfg = load_config(args.config, [*args.set_cfg, f"seed={args.seed}"])
    ds = load_dataset(TCMA / f"{args.set}.h5ad")
    Y = ds.normalized
    split = make_split(Y, seed=args.seed, test_ratio=cfg.test_ratio, val_ratio=cfg.val_ratio)
    res = fit(cfg, ds, split)
    imp = res.imputer
    view = training_view(Y, split)
    rows = []
    for mode, n in MODES:
        imp.cfg = dataclasses.replace(imp.cfg, sampling=mode, sampling_fraction=n)
        t0 = time.perf_counter()
        filled = imp.impute(view, split.observed)
        sec = time.perf_counter() - t0
        m = evaluate(Y, filled, split.test)
        rows.append({"sampling": mode, "n": n, "impute_seconds": round(sec, 2), "pcc_per_microbe": m["pcc_per_microbe"],
                     "pcc": m["pcc"], "rmse": m["rmse"]})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"dataset": args.set, "seed": args.seed, "config": args.config.stem, "overrides": args.set_cfg,
            "device": "cuda" if torch.cuda.is_available() else "cpu", "train_seconds": round(res.seconds, 1),
            "infer_ar_steps": cfg.infer_ar_steps, "n_impute_samples": cfg.n_impute_samples,
            "adaptive_rule": "AR step k uses stride n * 2^k (capped at 20)", "rows": rows}


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
