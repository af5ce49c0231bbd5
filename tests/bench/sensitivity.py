"""Do the knobs the studies search change the result more than the seed does? On one TCMA set.

For each knob (ar_decay, f_threshold, mi_threshold, dep_mask_mode, sampling_fraction) it trains the
config once per value, everything else fixed (held-out masks of --split-seed, model seed 0), and takes
the spread (max - min) of validation pcc_per_microbe across the values; the reference is the spread
across model seeds --seeds at the config's own settings (same masks). A ratio near or below 1 means
the knob is lost in seed noise. The VAE phase is cached (--vae-cache), so only the DAT retrains per value.
Inference-only knobs (sampling_fraction; studies/inference.py lists them) change nothing in training,
so they are scored on the seed-0 model of the config's own settings, as a study's `inference:` grid
does; a configuration already trained (a knob's value equal to the config's own) is not trained again.
With estimate: mean the sampler never runs, so sampling_fraction cannot matter (spread 0 by
construction); the bench measures it anyway.

    python tests/bench/sensitivity.py [--data stad] [--config studies/configs/small.yaml] [--seeds 0 1 2]
        [--knob name=v1,v2,v3 ...] [--only NAME ...] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from depmicro.core.data import load_dataset
from depmicro.core.data.evaluation import evaluate, make_split, training_view
from depmicro.core.model.config import config_to_dict, load_config
from depmicro.core.train import fit
from depmicro.studies.inference import knobs as inference_knobs

ROOT = Path(__file__).resolve().parents[2]
TCMA = ROOT.parent / "shared" / "data" / "tcma"
SETS = ("stad", "coad", "hnsc")
M = "pcc_per_microbe"
KNOBS = {"ar_decay": ["0.5", "0.9", "1.0"], "f_threshold": ["1.0", "3.84", "10.0"], "mi_threshold": ["0.02", "0.1", "0.3"],
         "dep_mask_mode": ["paper", "restrict", "off"], "sampling_fraction": ["2", "4", "20"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="stad", choices=SETS)
    ap.add_argument("--config", default=str(ROOT / "studies" / "configs" / "small.yaml"))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--knob", action="append", default=[], metavar="NAME=V1,V2,...", help="override a knob's range (or add one)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these knobs (e.g. to split the bench over processes)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--vae-cache", default=str(ROOT / ".depmicro_cache"))
    args = ap.parse_args()
    knobs = dict(KNOBS)
    for k in args.knob:
        name, _, vals = k.partition("=")
        knobs[name] = vals.split(",")
    if args.only:
        knobs = {k: v for k, v in knobs.items() if k in args.only}
    data = load_dataset(TCMA / f"{args.data}.h5ad")
    pretrain = [load_dataset(TCMA / f"{s}.h5ad") for s in SETS if s != args.data]
    split = None
    t0 = time.perf_counter()

    base = load_config(args.config, args.overrides)
    fits: dict[str, object] = {}  # training configuration -> its fit result

    def score(extra: list[str]) -> float:
        nonlocal split
        cfg = load_config(args.config, [*args.overrides, *extra])
        split = split or make_split(data.normalized, seed=args.split_seed, test_ratio=cfg.test_ratio, val_ratio=cfg.val_ratio)
        train_cfg = dataclasses.replace(cfg, **{k: getattr(base, k) for k in inference_knobs()})
        key = json.dumps(config_to_dict(train_cfg), sort_keys=True, default=str)
        trained = key not in fits
        if trained:
            fits[key] = fit(train_cfg, data, split, pretrain=pretrain, vae_cache_dir=args.vae_cache)
        res = fits[key]
        if cfg == train_cfg:
            v = res.val[M]
        else:  # an inference-only setting, scored on the trained model
            imp = res.imputer
            imp.cfg = cfg
            torch.manual_seed(cfg.seed)
            meta = data.metadata_text() if cfg.use_metadata else None
            filled = imp.impute(training_view(data.normalized, split), split.observed, meta)
            imp.cfg = train_cfg
            v = evaluate(data.normalized, filled, split.val)[M]
        print(json.dumps({"settings": extra, "val": round(v, 4), "trained": trained,
                          "seconds": round(time.perf_counter() - t0, 1)}), file=sys.stderr, flush=True)
        return v

    seeds = {s: score([f"seed={s}"]) for s in args.seeds}
    seed_spread = max(seeds.values()) - min(seeds.values())
    rows = []
    for name, values in knobs.items():
        vals = {v: score([f"{name}={v}", "seed=0"]) for v in values}
        spread = max(vals.values()) - min(vals.values())
        rows.append({"knob": name, "val_by_value": {k: round(x, 4) for k, x in vals.items()}, "spread": round(spread, 4),
                     "ratio_to_seed_spread": round(spread / seed_spread, 2) if seed_spread > 0 else None})
    print(json.dumps({"benchmark": "knob spread vs seed spread (validation pcc_per_microbe)", "data": args.data,
                      "config": os.path.relpath(args.config, ROOT), "overrides": args.overrides,
                      "seeds": {str(k): round(v, 4) for k, v in seeds.items()}, "seed_spread": round(seed_spread, 4), "knobs": rows,
                      "seconds": round(time.perf_counter() - t0, 1),
                      "machine": {"cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)}}, indent=2))


if __name__ == "__main__":
    main()
