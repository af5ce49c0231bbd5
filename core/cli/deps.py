"""`depmicro deps` (arguments: cli/arguments.py): dependency statistics of a whole data set (nothing
held out), for review and for reuse as a study's precomputed matrices."""
from __future__ import annotations

import argparse

import numpy as np

from depmicro.core.data import load_dataset
from depmicro.core.deps import DepSettings, compute_dep_stats, dep_stats_to_npz, dependency_mask, order_from_metadata
from depmicro.core.deps.plots import plot_dependencies
from depmicro.core.errors import DepmicroError
from depmicro.core.io.outputs import PLOTS_KIND, check_output


def deps(args: argparse.Namespace) -> dict:
    if args.mi_alpha is not None and args.permutations == 0:
        raise DepmicroError("--mi-alpha needs permutation p-values: give --permutations N (N > 0)")
    inputs = (args.path, args.metadata)
    out = check_output(args.out, inputs=inputs)
    if args.plot:
        check_output(args.plot, flag="--plot", directory=PLOTS_KIND, inputs=(*inputs, out))
    ds = load_dataset(args.path, metadata=args.metadata, orientation=args.orientation)
    order = order_from_metadata(ds.metadata, args.order_by) if args.order_by else None
    settings = DepSettings(lag=args.lag, order_by=args.order_by, n_permutations=args.permutations, seed=args.seed,
                           mi_bins=args.mi_bins, mi_estimator=args.mi_estimator, mi_jitter_repeats=args.mi_jitter_repeats)
    if ds.n_samples - settings.lag - 3 < 1:
        raise DepmicroError(f"{ds.n_samples} samples are too few for lag-{settings.lag} F-statistics (need at least {settings.lag + 4})")
    stats = compute_dep_stats(ds.normalized, settings, order=order, var_names=ds.var_names, device=args.device)
    dep = dependency_mask(stats, args.f_threshold, args.mi_threshold, f_alpha=args.f_alpha, mi_alpha=args.mi_alpha, fdr=args.fdr)
    D = ds.n_taxa
    off = ~np.eye(D, dtype=bool)
    c_dir = dependency_mask(stats, args.f_threshold, None, f_alpha=args.f_alpha, fdr=args.fdr) & off
    c_mi = dependency_mask(stats, None, args.mi_threshold, mi_alpha=args.mi_alpha, fdr=args.fdr) & off
    dep_stats_to_npz(stats, out, dep=dep)
    result = {
        "dataset": ds.name,
        "n_samples": ds.n_samples,
        "n_taxa": D,
        "directed_edges": int(c_dir.sum()),
        "mi_edges": int(c_mi.sum() // 2),
        "dep_edges": int((dep & off).sum()),
        "out": str(out),
        "seconds": round(stats.seconds, 3),
    }
    if args.plot:
        result["plots"] = [str(p) for p in plot_dependencies(stats, ds.normalized, args.plot, mi_threshold=args.mi_threshold,
                                                             alpha=args.mi_alpha or 0.05)]
    return result
