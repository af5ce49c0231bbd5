"""The model at the width of real tables (issue 13): per number of taxa D, on a kraken_like table of
1,000 samples, the DAT's training steps per second (the `tiny` config, a fixed number of optimizer
steps), VAE seconds per epoch, imputation seconds for the whole table and the peak resident memory.

Each size runs in a fresh subprocess (one torch thread), so peaks do not mix; a size that passes
--timeout is reported as timed out. `--code DIR` measures another checkout (e.g. `git archive main`
unpacked in DIR) on the same tables, for before/after figures in one run. `fit_estimate_s` adds up
the tiny config's phases (VAE epochs, DAT epochs, one validation imputation per epoch, the final
imputation) from the measured rates.

    python tests/bench/scale.py [--sizes 106 400 1000 1700] [--code DIR --label before] [--set max_memory=4GB] [--impute-rows 256]
    python tests/bench/scale.py --fit --sizes 1700 [--threads 2] [--set max_memory=4GB]   # the whole tiny fit, measured
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def table_dataset(path: str):
    """The saved kraken_like count table as a Dataset (synthetic sample and taxon names)."""
    import numpy as np

    from depmicro.core.data import Dataset

    counts = np.load(path)
    return Dataset(counts=counts, obs_names=[f"s{i}" for i in range(len(counts))],
                   var_names=[f"t{j}" for j in range(counts.shape[1])], name="kraken_like")


def child(a: argparse.Namespace) -> dict:
    if a.code:  # the other checkout's depmicro ahead of this one's editable install
        shim = Path(a.shim)
        sys.path.insert(0, str(shim))
    import resource

    import torch

    torch.set_num_threads(1)
    from depmicro.core.data.evaluation import make_split, training_view
    from depmicro.core.model.config import load_config
    from depmicro.core.train.fitting import build_imputer
    from depmicro.core.train.trainer import Trainer
    from depmicro.core.train.vae_phase import pretrain_vae

    ds = table_dataset(a.table)
    D = ds.counts.shape[1]
    Y = ds.normalized
    split = make_split(Y, seed=0)
    view = training_view(Y, split)
    root = Path(a.code) if a.code else REPO
    cfg = load_config(root / "studies" / "configs" / "tiny.yaml", ["use_metadata=false", f"vae_epochs={a.vae_epochs}", *a.set])
    out: dict = {"D": D, "n_samples": len(Y), "code": a.label}
    imp = build_imputer(cfg, view, split.observed, ds.var_names, None)
    t = time.perf_counter()
    pretrain_vae(imp, view, split.observed, [])
    out["vae_s_per_epoch"] = round((time.perf_counter() - t) / max(a.vae_epochs, 1), 3)
    # one epoch over `rows` rows is exactly rows / batch_size optimizer steps; more steps than the table
    # holds batches (hundreds, to time a GPU past its one-off costs) run as several such epochs
    per_epoch = max(1, min(a.steps, len(view) // cfg.batch_size))
    n_epochs = -(-a.steps // per_epoch)
    rows = per_epoch * cfg.batch_size
    Trainer(imp, view[-cfg.batch_size:], split.observed[-cfg.batch_size:], None).epoch()  # warm-up step, not timed:
    # the first step pays one-off allocations, which would otherwise count against narrow tables' short steps
    trainer = Trainer(imp, view[:rows], split.observed[:rows], None)
    out["micro_batch"] = getattr(trainer, "micro", cfg.batch_size)
    out["steps_timed"] = per_epoch * n_epochs
    t = time.perf_counter()
    for _ in range(n_epochs):
        trainer.epoch()
    step_s = (time.perf_counter() - t) / out["steps_timed"]
    out["train_steps_per_s"] = round(1 / step_s, 4)
    out["peak_rss_mb_after_training"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps(out), flush=True)  # partial result, in case imputation passes the time limit
    n = len(Y) if a.impute_rows <= 0 else min(a.impute_rows, len(Y))
    t = time.perf_counter()
    imp.impute(view[:n], split.observed[:n])
    # rows are imputed independently, in batches: seconds for all rows scale with the row count
    out["impute_rows"] = n
    out["impute_s"] = round((time.perf_counter() - t) * len(Y) / n, 2)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    steps_per_epoch = max(1, len(Y) // cfg.batch_size)
    tiny = load_config(root / "studies" / "configs" / "tiny.yaml")
    out["fit_estimate_s"] = round(tiny.vae_epochs * out["vae_s_per_epoch"] + tiny.epochs * steps_per_epoch * step_s
                                  + (tiny.epochs + 1) * out["impute_s"], 1)
    return out


def fit_child(a: argparse.Namespace) -> dict:
    """The whole `tiny` fit (dependency statistics, VAE phase, DAT epochs with validation, test
    imputation) of the table, as `depmicro train` runs it: wall seconds, peak RSS, test quality."""
    import resource

    import torch

    torch.set_num_threads(a.threads)
    from depmicro.core.data.evaluation import make_split
    from depmicro.core.model.config import load_config
    from depmicro.core.train import fit

    ds = table_dataset(a.table)
    counts, D = ds.counts, ds.counts.shape[1]
    cfg = load_config(REPO / "studies" / "configs" / "tiny.yaml", ["use_metadata=false", *a.set])
    t = time.perf_counter()
    res = fit(cfg, ds, make_split(ds.normalized, seed=0))
    return {"D": D, "n_samples": len(counts), "code": a.label, "fit": "tiny", "torch_threads": a.threads,
            "fit_s": round(time.perf_counter() - t, 1), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "test_pcc_per_microbe": round(float(res.test["pcc_per_microbe"]), 4), "epochs": res.epochs}


def shim_for(code: Path, where: Path) -> Path:
    """A folder with `depmicro/{core,studies,...}` pointing into `code`, to put first on sys.path."""
    pkg = where / "depmicro"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    for name in ("core", "studies", "cluster", "analysis"):
        if (code / name).is_dir() and not (pkg / name).exists():
            (pkg / name).symlink_to(code.resolve() / name)
    return where


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", type=int, default=[106, 400, 1000, 1700])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps timed per size")
    ap.add_argument("--vae-epochs", type=int, default=2, help="VAE epochs timed per size")
    ap.add_argument("--code", help="another checkout to measure (its core/ and studies/configs/tiny.yaml)")
    ap.add_argument("--label", default="this checkout")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per size")
    ap.add_argument("--impute-rows", type=int, default=0, help="impute only this many rows and scale the seconds to all (0: all)")
    ap.add_argument("--fit", action="store_true", help="run the whole tiny fit per size instead (wall seconds, peak RSS, test quality)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for --fit")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--table", help=argparse.SUPPRESS)
    ap.add_argument("--shim", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(fit_child(a) if a.fit else child(a)), flush=True)
        return
    import numpy as np

    from depmicro.core.data.synthetic import kraken_like

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        shim = shim_for(Path(a.code), Path(tmp) / "shim") if a.code else None
        for D in a.sizes:
            table = Path(tmp) / f"kraken_{D}.npy"
            np.save(table, kraken_like(n_samples=a.samples, n_taxa=D, seed=0, metadata=False)[0].counts)
            cmd = [sys.executable, __file__, "--child", "--table", str(table), "--steps", str(a.steps), "--impute-rows", str(a.impute_rows),
                   "--vae-epochs", str(a.vae_epochs), "--label", a.label, "--threads", str(a.threads)] + (["--fit"] if a.fit else [])
            cmd += [x for s in a.set for x in ("--set", s)]
            if a.code:
                cmd += ["--code", a.code, "--shim", str(shim)]
            env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
            t0 = time.perf_counter()
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, env=env)
                line = res.stdout.strip().splitlines()[-1] if res.returncode == 0 and res.stdout.strip() else None
                row = json.loads(line) if line else {"D": D, "code": a.label, "rc": res.returncode,
                                                     "error": res.stderr.strip().splitlines()[-3:]}
            except subprocess.TimeoutExpired as exc:  # keep what the child measured before the limit
                partial = (exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or "").strip().splitlines()
                row = {**(json.loads(partial[-1]) if partial else {"D": D, "code": a.label}), "timed_out_after_s": a.timeout}
            row["wall_s"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
