"""Ways to read one fitted model, side by side (docs/model-log.md section 10): the DAT's mean estimate,
its encoder, the two blended (`(1 - w) * DAT + w * encoder`: the DAT's correction shrunk toward its floor),
1 or 4 AR steps, the mean of 8 passes that each hide another random share of the observed nonzero
entries (test-time re-masking), and further DATs of other seeds on the same VAE (or, with --own-vae,
whole models of other seeds on the same split) with their mean.

Every variant reuses one fit, so their differences are the read-out alone; softimpute on the same masks
is the bar. Prints one JSON object (validation, test pcc_per_microbe per variant); rows go to stderr.

    python tests/bench/inference_variants.py --data coad [--seed 0] [--members 2 [--own-vae]] [--set key=value ...]
        [--config studies/configs/small.yaml] [--vae-cache .depmicro_cache]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from depmicro.core.data import load_dataset
from depmicro.core.data.baselines import impute_with_baseline
from depmicro.core.data.evaluation import evaluate, make_split, training_view
from depmicro.core.imputer import keep_observed
from depmicro.core.model.config import load_config
from depmicro.core.train import fit
from depmicro.core.train.vae_phase import cached_vae_entry, vae_cache_key

ROOT = Path(__file__).resolve().parents[2]
TCMA = ROOT.parent / "shared" / "data" / "tcma"
SETS = ("stad", "coad", "hnsc")
M = "pcc_per_microbe"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="stad", choices=SETS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=str(ROOT / "studies" / "configs" / "small.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--members", type=int, default=1, help="DATs of seeds seed, seed + 1000, ... on the one VAE")
    ap.add_argument("--own-vae", action="store_true", help="each further member trains its own VAE (its seed's), not the first one's")
    ap.add_argument("--vae-cache", default=str(ROOT / ".depmicro_cache"))
    a = ap.parse_args()
    meta = TCMA / f"{a.data}_metadata.tsv"
    ds = load_dataset(TCMA / f"{a.data}.h5ad", metadata=meta if meta.exists() else None)
    pretrain = [load_dataset(TCMA / f"{s}.h5ad") for s in SETS if s != a.data]
    others = [p.normalized for p in pretrain]  # what the VAE phase and its cache key read
    cfg = load_config(a.config, [*a.set, f"seed={a.seed}"])
    Y = ds.normalized
    split = make_split(Y, seed=a.seed, test_ratio=cfg.test_ratio, val_ratio=cfg.val_ratio)
    view, obs = training_view(Y, split), split.observed
    md = ds.metadata_text() if cfg.use_metadata else None

    def score(F: np.ndarray) -> tuple[float, float]:
        return round(evaluate(Y, F, split.val)[M], 4), round(evaluate(Y, F, split.test)[M], 4)

    out: dict = {"data": a.data, "seed": a.seed, "config": Path(a.config).name, "set": a.set}
    filled, _ = impute_with_baseline("softimpute", Y, obs, seed=a.seed)
    out["softimpute"] = score(filled)
    entry, out["vae_source"] = cached_vae_entry(cfg, view, obs, others, cache_dir=a.vae_cache)
    fills = []
    for k in range(a.members):
        c = dataclasses.replace(cfg, seed=a.seed + 1000 * k)  # another DAT seed, handed the same VAE (or its own)
        t = time.perf_counter()
        if a.own_vae and k > 0:
            res = fit(c, ds, split, pretrain=pretrain, vae_cache_dir=a.vae_cache)
        else:
            res = fit(c, ds, split, pretrain=pretrain, vae_entries={vae_cache_key(c, view, obs, others): entry})
        imp = res.imputer
        F = res.filled  # fit's own imputation of the view (the mean estimate, deterministic): not computed again
        fills.append(F)
        out[f"dat{k}"] = {"val_test": score(F), "fit_s": round(time.perf_counter() - t, 1)}
        if k == 0:
            E = imp.encoder_impute(view, obs)
            out["encoder"] = score(E)
            for w in (0.25, 0.5, 0.75):
                out[f"blend_{w}"] = score(keep_observed(Y, obs, (1 - w) * F + w * E))
            for steps in (1, 4):
                imp.cfg = dataclasses.replace(cfg, infer_ar_steps=steps)
                out[f"infer_ar_steps_{steps}"] = score(imp.impute(view, obs, md))
            imp.cfg = cfg
            rng = np.random.default_rng(0)
            for p in (0.05, 0.15):
                passes = []
                for _ in range(8):
                    kept = obs & ~((view > 0) & (rng.random(obs.shape) < p))
                    passes.append(imp.impute(np.where(kept, view, np.nan), kept, md))
                out[f"remask_{p}"] = score(keep_observed(Y, obs, np.mean(passes, 0)))
        if k >= 1:
            out[f"mean_of_{k + 1}_dats"] = score(keep_observed(Y, obs, np.mean(fills, 0)))
        print(json.dumps(out), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
