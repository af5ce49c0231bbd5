"""Does the diffusion transformer improve on the VAE it sits on? Per DAT epoch, on one TCMA set:

- the training loss and a held-out denoising loss (validation entries as the diffusion targets,
  fixed timesteps and noise), which says whether the DAT learns something that generalizes, and
  its pure-noise part: the mean squared error of the x0 the DAT predicts for the validation latents
  from pure noise, i.e. how well it regresses them. Before training the DAT predicts x0 = 0, the
  encoder's estimate, so the epoch-0 figure (`encoder_only`) is the bar;
- validation pcc_per_microbe of one imputation sample, of the median of --samples samples, and of
  the encoder alone (`encoder_impute`, what an untrained DAT returns).

Prints JSON. The VAE phase is cached in --vae-cache, so a second run only trains the DAT.

    python tests/bench/dat_epochs.py [--data stad] [--seed 0] [--epochs 12] [--every 2] [--samples 4]
        [--set key=value ...]
"""
from __future__ import annotations

import argparse
import dataclasses
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
from depmicro.core.diffusion.loss import epsilon_loss
from depmicro.core.train import fit

ROOT = Path(__file__).resolve().parents[2]
TCMA = ROOT.parent / "shared" / "data" / "tcma"
SETS = ("stad", "coad", "hnsc")


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="stad", choices=SETS)
    ap.add_argument("--config", default=str(ROOT / "studies" / "configs" / "tiny.yaml"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--every", type=int, default=2, help="evaluate the samplers every n-th epoch (and at epoch 1)")
    ap.add_argument("--samples", type=int, default=4, help="samples per entry for the median imputation")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--vae-cache", default=str(ROOT / ".depmicro_cache"))
    args = ap.parse_args()

    cfg = load_config(args.config, [*args.overrides, f"epochs={args.epochs}", f"seed={args.seed}", "val_every=1"])
    data = load_dataset(TCMA / f"{args.data}.h5ad")
    pretrain = [load_dataset(TCMA / f"{s}.h5ad") for s in SETS if s != args.data]
    Y = data.normalized
    split = make_split(Y, seed=cfg.seed, test_ratio=cfg.test_ratio, val_ratio=cfg.val_ratio)
    view, obs = training_view(Y, split), split.observed
    rows: list[dict] = []
    encoder: dict = {}
    t0 = time.perf_counter()

    def on_epoch(rep) -> None:
        imp = rep.model
        row = {"epoch": rep.epoch, "train_loss": round(rep.train_loss, 4),
               "heldout_denoising_loss": round(heldout_denoising_loss(imp, Y, split), 4),
               "heldout_x0_mse_from_pure_noise": round(heldout_denoising_loss(imp, Y, split, t_fixed=cfg.timesteps - 1), 4),
               "val_pcc_per_microbe_one_sample": round(rep.val["pcc_per_microbe"], 4)}
        if not encoder:
            enc = imp.encoder_impute(view, obs)
            state = {k: v.clone() for k, v in imp.dat.out.state_dict().items()}
            with torch.no_grad():  # a zeroed output layer proposes x0 = 0: the encoder's own latent
                imp.dat.out.weight.zero_()
                imp.dat.out.bias.zero_()
            encoder["heldout_x0_mse_from_pure_noise"] = round(heldout_denoising_loss(imp, Y, split, t_fixed=cfg.timesteps - 1), 4)
            imp.dat.out.load_state_dict(state)
            encoder.update(val=round(evaluate(Y, enc, split.val)["pcc_per_microbe"], 4),
                           test=round(evaluate(Y, enc, split.test)["pcc_per_microbe"], 4))
        if rep.epoch == 1 or rep.epoch % args.every == 0:
            base = imp.cfg
            imp.cfg = dataclasses.replace(base, n_impute_samples=args.samples)
            try:
                filled = imp.impute(view, obs)
            finally:
                imp.cfg = base
            row[f"val_pcc_per_microbe_median_of_{args.samples}"] = round(evaluate(Y, filled, split.val)["pcc_per_microbe"], 4)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    res = fit(cfg, data, split, pretrain=pretrain, on_epoch=on_epoch, vae_cache_dir=args.vae_cache)
    print(json.dumps({
        "benchmark": "DAT epochs vs the VAE encoder's own estimate",
        "data": args.data, "seed": args.seed, "config": os.path.relpath(args.config, ROOT), "overrides": args.overrides,
        "encoder_only": {"val_pcc_per_microbe": encoder["val"], "test_pcc_per_microbe": encoder["test"],
                         "heldout_x0_mse_from_pure_noise": encoder["heldout_x0_mse_from_pure_noise"]},
        "epochs": rows,
        "selected": {"best_val_epoch": max((r for r in rows), key=lambda r: r["val_pcc_per_microbe_one_sample"])["epoch"],
                     "val_pcc_per_microbe": round(res.val["pcc_per_microbe"], 4),
                     "test_pcc_per_microbe": round(res.test["pcc_per_microbe"], 4)},
        "vae_source": getattr(res, "vae_source", None),
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": {"cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)},
    }, indent=2))


if __name__ == "__main__":
    main()
