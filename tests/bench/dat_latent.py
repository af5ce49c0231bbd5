"""What the DAT's point estimate does in latent space: does its x0 move the latent dimension the decoder reads?

A DAT can cut the held-out latent error and leave validation where the encoder put it (docs/model-log.md section 29:
over a standardized VAE the error fell by a fifth while its x0 on the value-carrying dimension was uncorrelated with
the truth). After one fit, the held-out validation entries are read along the DAT's own one-step path (the x0 from a
zero input at t = T - 1 with each entry's encoder latent as hint, decoded), and for each entry the true residual
(the latent of its true value in the same context, minus the encoder's latent). Reported: validation of the encoder,
of `impute` and of the one-step path; the latent error before and after the DAT; the share of the residual's energy
in each latent dimension; the correlation of the DAT's x0 with the residual on the dimension holding most of it,
overall and within microbes (what pcc_per_microbe can see); and the one-step path with the validation values left in
its input, which must equal the one without them (the masks hold). The same latent read on training entries hidden
as validation hides its own (`train_hidden_*`): entries the VAE was trained on, the only kind the DAT learns from, so a
DAT whose x0 tracks the residual there and not on validation has learned the VAE's memory of its training entries
(docs/model-log.md section 30). Prints JSON.

    python tests/bench/dat_latent.py [--data stad | --wide 400] [--seed 0] [--config studies/configs/small.yaml]
        [--set key=value ...] [--vae-cache DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from depmicro.core.data import load_dataset
from depmicro.core.data.evaluation import evaluate, make_split, training_view
from depmicro.core.data.synthetic import kraken_like
from depmicro.core.model.ar import gather_index
from depmicro.core.model.config import load_config
from depmicro.core.train import fit

ROOT = Path(__file__).resolve().parents[2]
TCMA = ROOT.parent / "shared" / "data" / "tcma"
SETS = ("stad", "coad", "hnsc")
M = "pcc_per_microbe"


@torch.no_grad()
def one_step(imp, Y: np.ndarray, view: np.ndarray, obs: np.ndarray, val: np.ndarray, metadata, leak: bool = False):
    """The validation entries filled by the one-step x0 path, and per entry (true residual, DAT x0, microbe)."""
    filled, residual, x0s, microbes = view.copy(), [], [], []
    meta_all, has_all = imp.meta_vectors(metadata, len(Y))
    for i in range(0, len(Y), 100):
        sl = slice(i, i + 100)
        v, o = val[sl], obs[sl]
        truth = np.where(o | v, np.nan_to_num(Y[sl]), 0.0)
        y = torch.as_tensor(truth if leak else np.where(o, truth, 0.0), dtype=torch.float32)
        cond = torch.as_tensor(o)
        meta = None if meta_all is None else torch.as_tensor(meta_all[sl])
        z_c, cond_tok = imp.condition(y, cond, meta, torch.as_tensor(has_all[sl]))
        idx_np, valid_np = gather_index(v)
        idx, valid = torch.as_tensor(idx_np), torch.as_tensor(valid_np)
        step = torch.as_tensor(v.astype(np.int64))
        gi = idx[..., None].expand(-1, -1, z_c.shape[-1])
        hint = torch.gather(z_c, 1, gi)
        ctx, kv = imp.dat.encode_context(z_c * cond.float()[..., None], y, cond, cond_tok, imp.dat.context_mask(step))
        allow = imp.dat.noisy_mask(step, imp.dep_tensor(), imp.cfg.dep_mask_mode, idx, valid)
        t = torch.full(idx.shape, imp.cfg.timesteps - 1, dtype=torch.long)
        x0 = imp.dat.denoise(ctx, kv, torch.zeros_like(hint), t, idx, allow, hint, return_x0=True)
        z_hat = hint + x0 if imp.cfg.residual_diffusion else x0
        values = imp.vae.decode(imp.denorm(z_hat), cols=idx, partner_pred=imp.vae.gate_input(y, cond)).clamp(min=0).numpy()
        z_true = imp.norm(imp.vae.encode(torch.as_tensor(truth, dtype=torch.float32), torch.as_tensor(o | v), ctx_m=cond)[0])
        target = torch.gather(z_true, 1, gi) - hint
        for r in range(len(idx_np)):
            ok = valid_np[r]
            filled[i + r, idx_np[r][ok]] = values[r][ok]
            residual.append(target[r][ok].numpy())
            x0s.append((z_hat - hint)[r][ok].numpy())
            microbes.append(idx_np[r][ok])
    return filled, np.concatenate(residual), np.concatenate(x0s), np.concatenate(microbes)


def _within(a: np.ndarray, group: np.ndarray) -> np.ndarray:
    means = np.zeros(group.max() + 1)
    np.add.at(means, group, a)
    return a - (means / np.maximum(np.bincount(group), 1))[group]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--data", default="stad", choices=SETS)
    which.add_argument("--wide", type=int, metavar="D", help="kraken_like(1000, D), data seed 0, instead")
    ap.add_argument("--seed", type=int, default=0, help="split and model seed")
    ap.add_argument("--config", default=str(ROOT / "studies" / "configs" / "small.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--vae-cache", default=str(ROOT / ".depmicro_cache"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.wide is not None:
        data, pretrain, label = kraken_like(1000, args.wide, seed=0, metadata=False)[0], [], f"kraken_like_1000x{args.wide}_seed0"
        args.overrides = ["use_metadata=false", *args.overrides]
    else:
        data, label = load_dataset(TCMA / f"{args.data}.h5ad"), args.data
        pretrain = [load_dataset(TCMA / f"{s}.h5ad") for s in SETS if s != args.data]
    cfg = load_config(args.config, [*args.overrides, f"seed={args.seed}"])
    Y = data.normalized
    split = make_split(Y, seed=args.seed, test_ratio=cfg.test_ratio, val_ratio=cfg.val_ratio)
    res = fit(cfg, data, split, pretrain=pretrain, vae_cache_dir=args.vae_cache)
    imp = res.imputer
    imp.net.eval()
    view, obs = np.nan_to_num(training_view(Y, split)), split.observed
    metadata = data.metadata_text() if cfg.use_metadata else None
    filled, R, X, J = one_step(imp, Y, view, obs, split.val, metadata)
    leaked, *_ = one_step(imp, Y, view, obs, split.val, metadata, leak=True)
    energy = (R ** 2).sum(0) / (R ** 2).sum()
    d = int(np.argmax(energy))
    # training entries hidden as validation hides its own (per row as many, among the nonzero ones): what the DAT
    # learned on rows and entries its VAE was trained on, against the same read on held-out entries
    rng = np.random.default_rng(args.seed)
    hidden = np.zeros_like(obs)
    for r in range(len(Y)):
        pool = np.flatnonzero(obs[r] & (np.nan_to_num(Y[r]) > 0))
        n = min(int(split.val[r].sum()), max(len(pool) - 1, 0))
        hidden[r, rng.choice(pool, n, replace=False)] = True
    _, Rt, Xt, Jt = one_step(imp, Y, view, obs & ~hidden, hidden, metadata)
    print(json.dumps({
        "benchmark": "the DAT's x0 against the true latent residual on validation entries",
        "data": label, "seed": args.seed, "config": os.path.relpath(args.config, ROOT), "overrides": args.overrides,
        "val_encoder": round(evaluate(Y, imp.encoder_impute(view, obs), split.val)[M], 4),
        "val_impute": round(evaluate(Y, imp.impute(view, obs, metadata), split.val)[M], 4),
        "val_one_step": round(evaluate(Y, filled, split.val)[M], 4),
        "val_one_step_values_in_input": round(evaluate(Y, leaked, split.val)[M], 4),
        "latent_mse_encoder": round(float((R ** 2).mean()), 4), "latent_mse_dat": round(float(((R - X) ** 2).mean()), 4),
        "residual_energy_per_dim": [round(float(e), 3) for e in energy], "value_dim": d,
        "corr_x0_residual": round(float(np.corrcoef(R[:, d], X[:, d])[0, 1]), 4),
        "corr_x0_residual_within_microbe": round(float(np.corrcoef(_within(R[:, d], J), _within(X[:, d], J))[0, 1]), 4),
        "train_hidden_latent_mse_encoder": round(float((Rt ** 2).mean()), 4),
        "train_hidden_latent_mse_dat": round(float(((Rt - Xt) ** 2).mean()), 4),
        "train_hidden_corr_x0_residual": round(float(np.corrcoef(Rt[:, d], Xt[:, d])[0, 1]), 4),
        "train_hidden_corr_x0_residual_within_microbe": round(float(np.corrcoef(_within(Rt[:, d], Jt), _within(Xt[:, d], Jt))[0, 1]), 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
