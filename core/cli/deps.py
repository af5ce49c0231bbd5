"""`depmicro deps`: dependency statistics of a whole data set (nothing held out), for review and for
reuse as a study's precomputed matrices."""
from __future__ import annotations

import argparse

from depmicro.core.cli.common import add_command, alpha, count, nonneg
from depmicro.core.errors import DepmicroError
from depmicro.core.io.outputs import PLOTS_KIND, check_output


def _cmd_deps(args: argparse.Namespace) -> dict:
    import numpy as np

    from depmicro.core.data import load_dataset
    from depmicro.core.deps import DepSettings, compute_dep_stats, dep_stats_to_npz, dependency_mask, order_from_metadata

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
        from depmicro.core.deps.plots import plot_dependencies

        result["plots"] = [str(p) for p in plot_dependencies(stats, ds.normalized, args.plot, mi_threshold=args.mi_threshold,
                                                             alpha=args.mi_alpha or 0.05)]
    return result


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "deps", _cmd_deps, "F-statistics, mutual information and the Dep mask of a count table")
    p.add_argument("path", help=".h5ad, .csv or .tsv count table (normalized as in Eq. 10-11; nothing is held out)")
    p.add_argument("--orientation", default="auto", choices=["auto", "samples", "taxa"], help="rows are samples or taxa (auto-detected by default)")
    p.add_argument("--metadata", help="per-sample metadata table (first column: sample id)")
    p.add_argument("--order-by", help="metadata column ordering the samples for the lag (default: file order)")
    p.add_argument("--lag", type=int, default=1, help="Granger lag in samples (default 1)")
    p.add_argument("--f-threshold", type=nonneg("F threshold"), default=3.84, help="directed edge j->i when F > this (default 3.84)")
    p.add_argument("--mi-threshold", type=nonneg("MI threshold"), default=0.1, help="symmetric edge when MI > this, in nats (default 0.1)")
    p.add_argument("--f-alpha", type=alpha, help="also require F p-value <= this")
    p.add_argument("--mi-alpha", type=alpha, help="also require permutation p-value <= this (needs --permutations)")
    p.add_argument("--fdr", action="store_true", help="Benjamini-Hochberg q-values instead of p-values for the alphas")
    p.add_argument("--permutations", type=count, default=0, help="MI permutation test with N permutations (default 0: none)")
    p.add_argument("--mi-bins", type=int, default=8, help="at most this many bins for a taxon's nonzero values (default 8)")
    p.add_argument("--mi-estimator", choices=["binned", "ksg"], default="binned",
                   help="binned plug-in (default, fast) or ksg: scikit-learn's k=3 estimator for all pairs (O(n^2) per pair)")
    p.add_argument("--mi-jitter-repeats", type=int, default=1, help="ksg: average over this many jitter seeds (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations (and of the ksg jitter)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--out", default="deps.npz", help="output .npz (f_stat, f_pvalue, mi, dep, var_names; default deps.npz)")
    p.add_argument("--plot", metavar="DIR", help="write the top directed pairs and the MI network figures here")
