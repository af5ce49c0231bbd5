"""Model variants side by side on one TCMA set and seed: the same split, the same cached VAE.

    python tests/bench/variants.py --data stad --seed 0 --config studies/configs/tiny.yaml \
        --variant base: --variant steps=train_steps=2000,lr_schedule=cosine,warmup_steps=100,ema_decay=0.999 \
        [--baselines iterative knn] [--vae-cache .depmicro_cache]

Each --variant is NAME:key=value,key=value (overrides on top of --config). For every variant it
reports validation and test pcc_per_microbe of the model's estimate, the same test figure after
the missing-mass projection (core/projection.py, a protocol artifact), the encoder alone
(`encoder_impute`, the DAT's floor) and the training seconds; each baseline gets the test figure
with and without the same projection. Prints one JSON object; rows also go to stderr as they finish.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from depmicro.core.data.baselines import impute_with_baseline
from depmicro.core.model.config import load_config
from depmicro.core.data import load_dataset
from depmicro.core.data.projection import project_missing_mass
from depmicro.core.data.evaluation import evaluate, make_split, training_view
from depmicro.core.train import fit

ROOT = Path(__file__).resolve().parents[2]
TCMA = ROOT.parent / "shared" / "data" / "tcma"
SETS = ("stad", "coad", "hnsc")
M = "pcc_per_microbe"


def _val_history(history: list[dict]) -> list[float | None]:
    """Validation per epoch (None where none ran). The mean estimate draws no random numbers, so validating less
    often leaves the training run unchanged: this list says what any val_every would have selected."""
    return [round(h["val"][M], 4) if h["val"] else None for h in history]


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition(":")
    return name, [kv for kv in rest.split(",") if kv]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="stad", choices=SETS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=str(ROOT / "studies" / "configs" / "tiny.yaml"))
    ap.add_argument("--variant", action="append", default=[], help="NAME:key=value,key=value")
    ap.add_argument("--baselines", nargs="*", default=[])
    ap.add_argument("--no-pretrain", action="store_true")
    ap.add_argument("--vae-cache", default=str(ROOT / ".depmicro_cache"))
    args = ap.parse_args()
    meta = TCMA / f"{args.data}_metadata.tsv"
    ds = load_dataset(TCMA / f"{args.data}.h5ad", metadata=meta if meta.exists() else None)
    others = [] if args.no_pretrain else [load_dataset(TCMA / f"{s}.h5ad") for s in SETS if s != args.data]
    Y = ds.normalized
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    split = None
    for text in args.variant or ["base:"]:
        name, overrides = parse_variant(text)
        cfg = load_config(args.config, [*overrides, f"seed={args.seed}"])
        split = split or make_split(Y, seed=args.seed, test_ratio=cfg.test_ratio, val_ratio=cfg.val_ratio)
        view, obs = training_view(Y, split), split.observed
        t0 = time.perf_counter()
        res = fit(cfg, ds, split, pretrain=others, vae_cache_dir=args.vae_cache)
        sec = time.perf_counter() - t0
        imp = res.imputer
        filled = imp.impute(view, obs, ds.metadata_text() if cfg.use_metadata else None)
        enc = imp.encoder_impute(view, obs)
        emit({"variant": name, "overrides": overrides, "val": round(res.val[M], 4), "test": round(res.test[M], 4),
              "test_projected": round(evaluate(Y, project_missing_mass(view, obs, filled), split.test)[M], 4),
              "encoder_val": round(evaluate(Y, enc, split.val)[M], 4), "encoder_test": round(evaluate(Y, enc, split.test)[M], 4),
              "test_rmse": round(res.test["rmse"], 4), "best_epoch": max(res.history, key=lambda h: h["val"].get(M, -9))["epoch"] if any(h["val"] for h in res.history) else None,
              "steps": res.history[-1].get("step") if res.history else None, "seconds": round(sec, 1), "vae_source": res.vae_source,
              "vae_factor_rank": imp.cfg.vae_factor_rank, "val_history": _val_history(res.history), **({"factor_rank_scores": res.factor_rank_scores} if res.factor_rank_scores else {})})
    split = split or make_split(Y, seed=args.seed)
    for method in args.baselines:
        filled, sec = impute_with_baseline(method, Y, split.observed, seed=args.seed)
        emit({"variant": f"baseline:{method}", "val": round(evaluate(Y, filled, split.val)[M], 4), "test": round(evaluate(Y, filled, split.test)[M], 4),
              "test_projected": round(evaluate(Y, project_missing_mass(Y, split.observed, filled), split.test)[M], 4),
              "seconds": round(sec, 1)})
    print(json.dumps({"benchmark": "model variants, one split", "data": args.data, "seed": args.seed,
                      "config": os.path.relpath(args.config, ROOT), "rows": rows,
                      "machine": {"cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)}}, indent=2))


if __name__ == "__main__":
    main()
