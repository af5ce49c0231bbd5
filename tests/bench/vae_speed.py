"""VAE-phase optimizer steps per second on this machine (the phase before the DAT: pretraining on the other sets,
then fine-tuning on the target's training view, `vae_epochs` each).

    python tests/bench/vae_speed.py [--data hnsc] [--config studies/configs/small.yaml] [--epochs 5] [--set KEY=VALUE]

Times whole epochs of `train_vae` on the target's training view after one warm-up epoch. It uses only
`TokenVAE.from_config` and `train_vae`, so the same file measures an older commit checked out in a throwaway
worktree: run both side by side, alternating, and compare the ratio (never a figure from another run). Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from depmicro.core.data import load_dataset
from depmicro.core.data.evaluation import make_split, training_view
from depmicro.core.model.config import load_config
from depmicro.core.model.vae import TokenVAE, train_vae

ROOT = Path(__file__).resolve().parents[2]
TCMA = ROOT.parent / "shared" / "data" / "tcma"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="hnsc")
    ap.add_argument("--config", default=str(ROOT / "studies" / "configs" / "small.yaml"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    import torch

    cfg = load_config(args.config, args.overrides)
    Y = load_dataset(TCMA / f"{args.data}.h5ad").normalized
    split = make_split(Y, seed=0, test_ratio=cfg.test_ratio, val_ratio=cfg.val_ratio)
    view, obs = training_view(Y, split), split.observed
    torch.manual_seed(cfg.seed)
    vae = TokenVAE.from_config(view.shape[1], cfg)
    opts = dict(lr=cfg.vae_lr, beta=cfg.vae_beta, batch_size=cfg.batch_size, mask_ratio=cfg.train_mask_ratio,
                rng=np.random.default_rng(cfg.seed), device=torch.device("cpu"))
    if cfg.vae_factor_visible_weight:  # absent before that option; the default keeps the older signature
        opts["factor_visible_weight"] = cfg.vae_factor_visible_weight
    train_vae(vae, [(view, obs)], epochs=1, **opts)  # warm-up (allocator, first-call overheads)
    t0 = time.perf_counter()
    train_vae(vae, [(view, obs)], epochs=args.epochs, **opts)
    sec = time.perf_counter() - t0
    steps = args.epochs * -(-len(view) // cfg.batch_size)
    print(json.dumps({"benchmark": "VAE training steps per second", "data": args.data, "config": Path(args.config).stem,
                      "overrides": args.overrides, "steps": steps, "seconds": round(sec, 2),
                      "steps_per_second": round(steps / sec, 2), "torch_threads": torch.get_num_threads(),
                      "load_average_1min": round(os.getloadavg()[0], 2),
                      "commit": os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip()}))


if __name__ == "__main__":
    main()
