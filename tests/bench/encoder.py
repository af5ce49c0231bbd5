"""The DAT's floor, measured alone: VAE variants scored by their encoder's estimate, one run, same split.

Each variant trains the VAE phase exactly as `fit` does (train_vae_entry: pretraining on the other TCMA
sets, then fine-tuning on the target's training view) and imputes with `encode` -> `decode` of the
m-latent, what an untrained DAT returns; `seen_hides` scores the same encoder on hidden *training* entries,
the values it trained on (its memory, against its inference on validation). Cheap (about a minute per
variant) next to a whole fit, so VAE choices can be screened here before a whole-model comparison
(variants.py).

    OMP_NUM_THREADS=1 python tests/bench/encoder.py --data coad --seed 0 \
        --variant base: --variant vw01:vae_beta=0,vae_visible_weight=0.1 --baselines iterative

Prints one JSON object; rows also go to stderr as they finish.
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
from depmicro.core.model.vae import TokenVAE
from depmicro.core.train.vae_phase import train_vae_entry

ROOT = Path(__file__).resolve().parents[2]
TCMA = ROOT.parent / "shared" / "data" / "tcma"
SETS = ("stad", "coad", "hnsc")
M = "pcc_per_microbe"


def encoder_estimate(state: dict, cfg, Y: np.ndarray, observed: np.ndarray) -> np.ndarray:
    vae = TokenVAE.from_config(Y.shape[1], cfg)
    vae.load_state_dict(state)
    vae.eval()
    return np.where(observed, Y, vae.estimate(Y, observed))


def factor_estimate(state: dict, cfg, Y: np.ndarray, observed: np.ndarray) -> np.ndarray:
    vae = TokenVAE.from_config(Y.shape[1], cfg)
    vae.load_state_dict(state)
    with torch.no_grad():
        y = torch.as_tensor(np.where(observed, Y, 0.0), dtype=torch.float32)
        out = vae.factor_predict(y, torch.as_tensor(observed)).clamp(min=0).numpy().astype(np.float64)
    return np.where(observed, Y, out)


def seen_entry_score(state: dict, cfg, Y: np.ndarray, view: np.ndarray, observed: np.ndarray, n_hide: int,
                     repeats: int = 3, seed: int = 123) -> float:
    """The encoder's pcc_per_microbe on random hides of *training* entries (values it trained on), as many as
    validation holds, averaged over `repeats` draws. Against its validation figure this is how much of a profile the
    encoder remembers rather than infers: the targets a DAT trains on are such entries (docs/model-log.md section 19)."""
    rng = np.random.default_rng(seed)
    cand = observed & (np.nan_to_num(view) > 0)
    scores = []
    for _ in range(repeats):
        hide = cand & (rng.random(cand.shape) < n_hide / max(cand.sum(), 1))
        obs = observed & ~hide
        scores.append(evaluate(Y, encoder_estimate(state, cfg, np.where(obs, view, np.nan), obs), hide)[M])
    return float(np.mean(scores))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="coad", choices=SETS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=str(ROOT / "studies" / "configs" / "small.yaml"))
    ap.add_argument("--variant", action="append", default=[], help="NAME:key=value,key=value (overrides on --config)")
    ap.add_argument("--baselines", nargs="*", default=[])
    args = ap.parse_args()
    Y = load_dataset(TCMA / f"{args.data}.h5ad").normalized
    others = [load_dataset(TCMA / f"{s}.h5ad").normalized for s in SETS if s != args.data]
    rows: list[dict] = []
    split = None
    for text in args.variant or ["base:"]:
        name, _, rest = text.partition(":")
        overrides = [kv for kv in rest.split(",") if kv]
        cfg = load_config(args.config, [*overrides, f"seed={args.seed}"])
        split = split or make_split(Y, seed=args.seed, test_ratio=cfg.test_ratio, val_ratio=cfg.val_ratio)
        view, obs = training_view(Y, split), split.observed
        t0 = time.perf_counter()
        entry = train_vae_entry(cfg, view, obs, others if cfg.vae_pretrain else [])
        filled = encoder_estimate(entry.state, cfg, view, obs)
        rows.append({"variant": name, "overrides": overrides, "val": round(evaluate(Y, filled, split.val)[M], 4),
                     "test": round(evaluate(Y, filled, split.test)[M], 4), "seconds": round(time.perf_counter() - t0, 1),
                     "seen_hides": round(seen_entry_score(entry.state, cfg, Y, view, obs, int(split.val.sum())), 4)})
        if cfg.vae_factor_rank:  # the factor model's own ridge prediction, what the tokens read beside their values
            lin = factor_estimate(entry.state, cfg, view, obs)
            rows[-1].update(factor_val=round(evaluate(Y, lin, split.val)[M], 4), factor_test=round(evaluate(Y, lin, split.test)[M], 4))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    split = split or make_split(Y, seed=args.seed)
    for method in args.baselines:
        filled, sec = impute_with_baseline(method, Y, split.observed, seed=args.seed)
        rows.append({"variant": f"baseline:{method}", "val": round(evaluate(Y, filled, split.val)[M], 4),
                     "test": round(evaluate(Y, filled, split.test)[M], 4), "seconds": round(sec, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"data": args.data, "seed": args.seed, "config": args.config, "metric": M, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
