"""Model variants side by side on one TCMA set and seed: the same split, the same cached VAE.

    python tests/bench/variants.py --data stad --seed 0 --config studies/configs/tiny.yaml \
        --variant base: --variant steps=train_steps=2000,lr_schedule=cosine,warmup_steps=100,ema_decay=0.999 \
        [--baselines iterative knn] [--vae-cache .depmicro_cache] [--vae-state FILE] [--tcma DIR] [--progress]

Each --variant is NAME:key=value,key=value (overrides on top of --config). For every variant it
reports validation and test pcc_per_microbe of the model's estimate, the same test figure after
the missing-mass projection (core/projection.py, a protocol artifact), the encoder alone
(`encoder_impute`, the DAT's floor) and the training seconds; each baseline gets the test figure
with and without the same projection. Prints one JSON object; rows also go to stderr as they finish.

`--vae-state FILE` takes the VAE from one cache entry (a `vae-<key>.safetensors` of core/train/vae_phase.py)
whatever its key, so a DAT can be trained on another machine on the very VAE a CPU run trained: the key holds
the torch version, which differs between machines. Its tensors' checksum is still checked; the variants' VAE
fields must build the same VAE shapes (load_state_dict refuses others), and no variant trains a VAE then.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from depmicro.core.data.baselines import impute_with_baseline
from depmicro.core.model.config import load_config
from depmicro.core.data import load_dataset
from depmicro.core.data.projection import project_missing_mass
from depmicro.core.data.evaluation import evaluate, make_split, training_view
from depmicro.core.train import fit
from depmicro.core.train.vae_phase import load_vae_entry, vae_cache_key

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
    ap.add_argument("--vae-state", help="a VAE cache entry to use whatever its key (trained on another machine)")
    ap.add_argument("--progress", action="store_true", help="each epoch's loss and validation to stderr")
    ap.add_argument("--tcma", default=str(TCMA), help="folder of SET.h5ad (or SET.csv) and SET_metadata.tsv")
    args = ap.parse_args()
    tcma = Path(args.tcma)

    def data_file(name: str) -> Path:
        h5ad = tcma / f"{name}.h5ad"
        return h5ad if h5ad.exists() or not (tcma / f"{name}.csv").exists() else tcma / f"{name}.csv"

    meta = tcma / f"{args.data}_metadata.tsv"
    ds = load_dataset(data_file(args.data), metadata=meta if meta.exists() else None)
    others = [] if args.no_pretrain else [load_dataset(data_file(s)) for s in SETS if s != args.data]
    vae_state = load_vae_entry(args.vae_state) if args.vae_state else None
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
        entries = None
        if vae_state is not None:  # filed under the key this machine computes for these inputs
            entries = {vae_cache_key(cfg, view, obs, [o.normalized for o in others]): vae_state}
        t0 = time.perf_counter()
        res = fit(cfg, ds, split, pretrain=others, vae_cache_dir=None if entries else args.vae_cache, vae_entries=entries,
                  progress=args.progress)
        sec = time.perf_counter() - t0
        if entries and res.vae_source != "shared":
            raise SystemExit(f"variant {name}: the VAE was {res.vae_source}, not the --vae-state entry")
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
                      "machine": {"cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
                                  "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                                  "torch": torch.__version__}}, indent=2))


if __name__ == "__main__":
    main()
