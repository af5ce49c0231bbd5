"""`depmicro train` and `depmicro impute` (arguments: cli/arguments.py; what they refuse before this
module loads: cli/model_checks.py). Loaded only when one of them runs, so torch stays out of
`depmicro --help` and out of a refused command line."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from depmicro.core.cli.model_checks import OUTPUT_SUFFIXES, check_impute, check_train
from depmicro.core.data import align_taxa, in_taxon_order, load_dataset
from depmicro.core.data.dataset import taxa_difference
from depmicro.core.data.evaluation import make_split, undefined_score_note
from depmicro.core.errors import DepmicroError
from depmicro.core.model.bundle import load_model, save_model
from depmicro.core.model.config import ModelConfig
from depmicro.core.train import fit


# Where small.yaml's VAE stops being the right one, on kraken_like (docs/model-log.md sections 24-25). From PARTNER_TAXA
# taxa a regression of each microbe on its 8 partners (vae_partners) lifts the whole model (400 taxa, split seeds 0-2:
# test 0.477 against small.yaml's 0.450, iterative's 0.453 and wide.yaml's 0.438 at seeds 0-1); past WIDE_TAXA the
# standardized VAE on top of it wins (encoder alone: behind by 0.012 test at 800 taxa, ahead by 0.013 at 1,000 and 0.053
# at 1,700). On the 106-taxon TCMA sets partners traded down, so below PARTNER_TAXA nothing is suggested.
PARTNER_TAXA = 400
WIDE_TAXA = 900


def wide_table_note(n_taxa: int, cfg: ModelConfig) -> str | None:
    """A one-line pointer to wide.yaml when a wide table meets a VAE that lacks what such tables needed. Why: at 1,700 taxa
    small.yaml's model scored 0.23 test and wide.yaml's 0.43, at 400 0.450 against partners' 0.477; nothing in the
    command says so."""
    if n_taxa > WIDE_TAXA and not (cfg.vae_standardize and cfg.vae_partners):
        return (f"note: {n_taxa} taxa; studies/configs/wide.yaml (vae_standardize, vae_partners) scored 0.43 against "
                f"small.yaml's 0.23 on a 1,700-taxon table (README, Wide tables)")
    if PARTNER_TAXA <= n_taxa <= WIDE_TAXA and (not cfg.vae_partners or cfg.vae_standardize):
        return (f"note: {n_taxa} taxa; studies/configs/wide.yaml --set vae_standardize=false (vae_partners) scored 0.477 "
                f"against small.yaml's 0.450 and wide.yaml's 0.438 on a 400-taxon table (README, Wide tables)")
    return None


def train(args: argparse.Namespace) -> dict:
    cfg, out = check_train(args)
    ds = load_dataset(args.data, metadata=args.metadata)
    note = wide_table_note(ds.n_taxa, cfg)
    if note:
        print(note, file=sys.stderr)
    pretrain = align_taxa(ds, [load_dataset(p) for p in (args.pretrain or [])])
    split = make_split(ds.counts, seed=cfg.seed, test_ratio=cfg.test_ratio, val_ratio=cfg.val_ratio)
    res = fit(cfg, ds, split, pretrain=pretrain, progress=sys.stderr.isatty())
    note = undefined_score_note(res.test)
    if note:
        print(note, file=sys.stderr)
    save_model(res.imputer, out)
    return {"val": res.val, "test": res.test, "seconds": round(res.seconds, 3), "epochs": res.epochs,
            "dataset": ds.name, "seed": cfg.seed, "protocol": cfg.protocol, "model": str(out)}


def _std_path(path: Path) -> Path:
    """Where a CSV/TSV output's per-entry std goes: `x.csv` -> `x.std.csv`."""
    return path.with_name(f"{path.stem}.std{path.suffix}")


def _write_table(path: Path, values, obs_names, var_names, observed, std=None) -> None:
    """Write next to the target and rename, so a failure never leaves half a file. `std` (same shape)
    goes into the AnnData layer "std", or for CSV/TSV into `<name>.std<suffix>` beside the output."""
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise DepmicroError(f"{path}: output must end in .h5ad, .csv or .tsv")
    if not path.parent.is_dir():
        raise DepmicroError(f"{path.parent}: output directory does not exist")
    tmps: list[tuple[str, Path]] = []

    def temp(target: Path) -> str:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
        os.close(fd)
        tmps.append((tmp, target))
        return tmp

    try:
        if suffix == ".h5ad":
            import anndata as ad

            adata = ad.AnnData(X=np.asarray(values, dtype=np.float64),
                               obs=pd.DataFrame(index=[str(s) for s in obs_names]),
                               var=pd.DataFrame(index=[str(v) for v in var_names]))
            adata.layers["observed"] = observed.astype(np.uint8)
            if std is not None:
                adata.layers["std"] = np.asarray(std, dtype=np.float64)
            adata.uns["depmicro"] = {"space": "log10(100 * counts / rowsum + 1) (Eq. 10-11)"}
            adata.write_h5ad(temp(path))
        else:
            sep = "," if suffix == ".csv" else "\t"
            pd.DataFrame(values, index=obs_names, columns=var_names).to_csv(temp(path), sep=sep)
            if std is not None:
                pd.DataFrame(std, index=obs_names, columns=var_names).to_csv(temp(_std_path(path)), sep=sep)
        for tmp, target in reversed(tmps):  # the std file first: the main output appears last
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in tmps:
            Path(tmp).unlink(missing_ok=True)
        raise


def impute(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    model_dir = Path(args.model)
    out = check_impute(args)
    imp = load_model(model_dir)  # verifies the manifest and loads from the bytes it hashed
    if args.metadata and not imp.cfg.use_metadata:
        raise DepmicroError(f"--metadata {args.metadata}: this model was trained without metadata (use_metadata: false); "
                            "leave --metadata out")
    given = load_dataset(args.data, metadata=args.metadata, allow_missing=True)
    what = taxa_difference(given.var_names, imp.var_names)
    if what:
        raise DepmicroError(f"{args.data}: taxa do not match the model's ({what})")
    ds = in_taxon_order(given, imp.var_names)  # the model's column order in, the file's order out
    missing = ds.missing if ds.missing is not None else np.zeros(ds.counts.shape, dtype=bool)
    if args.zeros:
        missing = missing | (ds.counts == 0)
    observed = ~missing
    # rows are normalized over their observed counts: the mass of the missing entries is unknown
    Y = ds.normalized
    meta = ds.metadata_text() if imp.cfg.use_metadata else None
    filled = imp.impute(Y, observed, meta)
    std = imp.uncertainty(Y, observed, meta, n=args.uncertainty) if args.uncertainty else None
    pos = {v: i for i, v in enumerate(imp.var_names)}
    back = np.array([pos[v] for v in given.var_names])
    _write_table(out, filled[:, back], ds.obs_names, given.var_names, observed[:, back],
                 None if std is None else std[:, back])
    res = {"out": str(out), "n_samples": ds.n_samples, "n_taxa": ds.n_taxa, "n_imputed": int(missing.sum()),
           # rows with nothing observed get the model's prior alone, the same fill for each: say how many
           "n_samples_without_observed": int((~observed.any(axis=1)).sum()),
           "estimate": imp.cfg.estimate, "seconds": round(time.perf_counter() - t0, 3)}
    if std is not None:
        res["std"] = "layer 'std'" if out.suffix.lower() == ".h5ad" else str(_std_path(out))
    return res
