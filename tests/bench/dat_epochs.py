"""Does the diffusion transformer improve on the VAE it sits on? Paired over seeds, on one TCMA set or a wide table.

For each seed (the held-out masks and the model's seed): the VAE encoder's own estimate on validation
(`encoder_impute`, what an untrained DAT returns: residual diffusion with a zero-initialized x0 head)
against the DAT's point estimate (cfg.estimate, EMA weights when the config has them) per epoch and
at the selected epoch, plus, with --losses, the held-out x0 error from pure noise (how well the DAT
regresses the validation entries' latents; the encoder's figure is that of x0 = 0).

The summary says whether the DAT earns its place: the mean paired gain (DAT minus encoder, selected
epoch, validation pcc_per_microbe) against the seed-to-seed spread (sd over seeds) of the DAT's own
validation figure. That gain is read at the checkpoint validation itself selected, so a DAT level with its encoder
shows about the validation noise as a gain (docs/model-log.md section 21); the summary also gives two figures the
selection did not see: the gain on test, and the mean over all epochs of the DAT's validation minus the encoder's.
Prints JSON; the VAE phase is cached in --vae-cache.

`--wide D` runs on `kraken_like(1000, D)` instead (the shape of a Kraken-TCGA genus table; metadata off, no
pretraining sets; `--data-seed` draws another table): where the encoder's factors cannot hold every planted
dependency, which is what the DAT's Dep-masked attention is for (docs/model-log.md section 22). At D = 400 a fit of
small.yaml takes about an hour on one CPU thread; at 1,700 it is GPU work.

    python tests/bench/dat_epochs.py [--data stad | --wide 400 [--data-seed 0]] [--seeds 0 1 2]
        [--config studies/configs/small.yaml] [--set key=value ...] [--losses]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from depmicro.core.model.config import load_config
from depmicro.core.data import load_dataset
from depmicro.core.data.evaluation import evaluate, make_split, training_view
from depmicro.core.data.synthetic import kraken_like
from depmicro.core.diffusion.loss import epsilon_loss
from depmicro.core.train import fit

ROOT = Path(__file__).resolve().parents[2]
TCMA = ROOT.parent / "shared" / "data" / "tcma"
SETS = ("stad", "coad", "hnsc")
M = "pcc_per_microbe"


def heldout_denoising_loss(imp, Y: np.ndarray, split, repeats: int = 4, t_fixed: int | None = None) -> float:
    """Mean loss with the validation entries as targets; test entries stay hidden. Same draws every call.
    With t_fixed = T - 1: the x0 mean squared error from pure noise (DepMicroDiffImputer.loss)."""
    seen = split.observed | split.val
    yv = torch.as_tensor(np.where(seen, Y, 0.0), dtype=torch.float32)
    m = torch.as_tensor(seen)
    rng = np.random.default_rng(123)
    torch_state = torch.get_rng_state()
    torch.manual_seed(123)
    total, weight = 0.0, 0
    try:
        with torch.no_grad():
            for _ in range(repeats):
                for i in range(0, len(Y), 128):
                    sl = slice(i, i + 128)
                    k = int(split.val[sl].sum())
                    if k:
                        loss = epsilon_loss(imp, yv[sl], m[sl], None, torch.zeros(len(yv[sl]), dtype=torch.bool), rng, target=split.val[sl],
                                        t_fixed=t_fixed)
                        total, weight = total + float(loss) * k, weight + k
    finally:
        torch.set_rng_state(torch_state)  # the training stream continues as if this never ran
    return total / max(weight, 1)


def one_seed(args, seed: int, data, pretrain) -> dict:
    cfg = load_config(args.config, [*args.overrides, f"seed={seed}"])
    Y = data.normalized
    split = make_split(Y, seed=seed, test_ratio=cfg.test_ratio, val_ratio=cfg.val_ratio)
    view, obs = training_view(Y, split), split.observed
    epochs: list[dict] = []
    enc: dict = {}
    t0 = time.perf_counter()

    def on_epoch(rep) -> None:
        imp = rep.model
        if not enc:
            e = imp.encoder_impute(view, obs)
            enc.update(val=evaluate(Y, e, split.val)[M], test=evaluate(Y, e, split.test)[M])
            print(json.dumps({"seed": seed, "encoder_val": round(enc["val"], 4), "encoder_test": round(enc["test"], 4)}),
                  file=sys.stderr, flush=True)  # a run cut short still leaves the floor its curve is read against
        row = {"epoch": rep.epoch, "train_loss": round(rep.train_loss, 4), "val": round(rep.val[M], 4) if rep.val else None}
        if args.losses:
            with rep.ema_weights():
                row["heldout_x0_mse_from_pure_noise"] = round(heldout_denoising_loss(imp, Y, split, t_fixed=cfg.timesteps - 1), 4)
        epochs.append(row)
        print(json.dumps({"seed": seed, **row}), file=sys.stderr, flush=True)

    res = fit(cfg, data, split, pretrain=pretrain, on_epoch=on_epoch, vae_cache_dir=args.vae_cache)
    return {"seed": seed, "encoder_val": round(enc["val"], 4), "encoder_test": round(enc["test"], 4),
            "dat_val": round(res.val[M], 4), "dat_test": round(res.test[M], 4), "gain_val": round(res.val[M] - enc["val"], 4),
            "gain_test": round(res.test[M] - enc["test"], 4),
            "curve_gain_val": round(float(np.mean([r["val"] for r in epochs if r["val"] is not None])) - enc["val"], 4),
            "selected_epoch": max((r for r in epochs if r["val"] is not None), key=lambda r: r["val"])["epoch"],
            "epochs": epochs, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--data", default="stad", choices=SETS)
    which.add_argument("--wide", type=int, metavar="D", help="a synthetic kraken_like table of 1,000 samples x D taxa instead")
    ap.add_argument("--data-seed", type=int, help="the kraken_like table's seed (with --wide; default 0)")
    ap.add_argument("--config", default=str(ROOT / "studies" / "configs" / "small.yaml"))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--losses", action="store_true", help="also the held-out x0 error from pure noise per epoch")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--vae-cache", default=str(ROOT / ".depmicro_cache"))
    args = ap.parse_args()
    if args.data_seed is not None and args.wide is None:
        ap.error("--data-seed draws a synthetic table: it needs --wide")
    if args.wide is not None:
        if args.wide < 2:
            ap.error(f"--wide needs at least 2 taxa, got {args.wide}")
        data_seed = args.data_seed or 0
        data, pretrain = kraken_like(1000, args.wide, seed=data_seed, metadata=False)[0], []
        args.overrides = ["use_metadata=false", *args.overrides]
        label = f"kraken_like_1000x{args.wide}_seed{data_seed}"
    else:
        data = load_dataset(TCMA / f"{args.data}.h5ad")
        pretrain = [load_dataset(TCMA / f"{s}.h5ad") for s in SETS if s != args.data]
        label = args.data
    runs = [one_seed(args, s, data, pretrain) for s in args.seeds]
    gains = np.array([r["gain_val"] for r in runs])
    dat = np.array([r["dat_val"] for r in runs])
    spread = float(dat.std(ddof=1)) if len(dat) > 1 else float("nan")
    print(json.dumps({
        "benchmark": "DAT point estimate vs its own VAE encoder (validation pcc_per_microbe, paired over seeds)",
        "data": label, "config": os.path.relpath(args.config, ROOT), "overrides": args.overrides, "runs": runs,
        "summary": {"mean_gain": round(float(gains.mean()), 4), "sd_gain": round(float(gains.std(ddof=1)), 4) if len(gains) > 1 else None,
                    "min_gain": round(float(gains.min()), 4), "dat_val_sd_over_seeds": round(spread, 4),
                    "mean_gain_test": round(float(np.mean([r["gain_test"] for r in runs])), 4),
                    "mean_curve_gain_val": round(float(np.mean([r["curve_gain_val"] for r in runs])), 4),
                    "earns_its_place": bool(gains.min() > 0 and gains.mean() > spread)},
        "machine": {"cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)},
    }, indent=2))


if __name__ == "__main__":
    main()
