"""DAT optimizer steps per second on this machine, and where one step's time goes.

    python tests/bench/train_speed.py [--data stad] [--batch-size 64] [--epochs 3] [--profile]

Builds the model as core.train.fit does (VAE phase shortened to --vae-epochs: its quality does not
change the cost of a DAT step), then times whole DAT epochs through the trainer and divides by the
number of optimizer steps. Uses only what the trainer has had since the layout of issue 10
(`Trainer.epoch`), so the same file measures an older commit checked out in a throwaway worktree. --profile adds a
torch.profiler table of one epoch (self CPU time per op, top 25). Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from depmicro.core.model.config import load_config
from depmicro.core.data import load_dataset
from depmicro.core.data.evaluation import make_split, training_view
from depmicro.core.train.fitting import build_imputer
from depmicro.core.train.trainer import Trainer, seed_all
from depmicro.core.train.vae_phase import pretrain_vae

ROOT = Path(__file__).resolve().parents[2]
TCMA = ROOT.parent / "shared" / "data" / "tcma"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="stad")
    ap.add_argument("--config", default=str(ROOT / "studies" / "configs" / "tiny.yaml"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--vae-epochs", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    import torch

    cfg = load_config(args.config, [f"batch_size={args.batch_size}", f"vae_epochs={args.vae_epochs}", "use_metadata=false",
                                    *args.overrides])
    ds = load_dataset(TCMA / f"{args.data}.h5ad")
    Y = ds.normalized
    split = make_split(Y, seed=0, test_ratio=cfg.test_ratio, val_ratio=cfg.val_ratio)
    view, obs = training_view(Y, split), split.observed
    seed_all(cfg.seed)
    imp = build_imputer(cfg, view, obs, ds.var_names, None)
    pretrain_vae(imp, view, obs, [])
    trainer = Trainer(imp, view, obs, None)
    n_batches = max(1, len(view) // cfg.batch_size)  # the trainer folds a short last batch into the one before
    trainer.epoch()  # warm-up (allocator, first-call overheads)
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        trainer.epoch()
    sec = time.perf_counter() - t0
    out = {"benchmark": "DAT training steps per second", "data": args.data, "batch_size": cfg.batch_size,
           "steps": n_batches * args.epochs, "seconds": round(sec, 2), "steps_per_second": round(n_batches * args.epochs / sec, 2),
           "torch_threads": torch.get_num_threads(), "device": str(trainer.acc.device), "load_average_1min": round(os.getloadavg()[0], 2),
           "commit": os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip()}
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        gpu = torch.cuda.is_available()  # on a GPU the table also has each op's kernel time
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])) as prof:
            trainer.epoch()
        out["profile"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    # the per-step numpy work on its own (Algorithm 1 per row + the padded noisy-token index), which the
    # torch profiler does not see: 200 batches of real rows with corrupt() targets
    from depmicro.core.model.ar import gather_index, train_steps
    from depmicro.core.model.vae import corrupt

    rng = np.random.default_rng(0)
    targets = [corrupt(obs[b], trainer.Y[b], cfg.train_mask_ratio, rng) for b in (rng.permutation(len(view))[: cfg.batch_size] for _ in range(200))]
    t0 = time.perf_counter()
    for tg in targets:
        train_steps(tg, imp.rank, cfg.ar_decay, rng)
        gather_index(tg)
    out["mask_building_ms_per_batch"] = round((time.perf_counter() - t0) / len(targets) * 1000, 3)
    print(json.dumps({k: v for k, v in out.items() if k != "profile"}, indent=2))
    if args.profile:
        print(out["profile"])


if __name__ == "__main__":
    main()
