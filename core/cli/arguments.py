"""The arguments of the core's commands (what `depmicro CMD --help` shows). Kept apart from the
handlers (cli/data.py, deps.py, model.py), which import torch and pandas-heavy modules at module
level: building the parser loads none of them."""
from __future__ import annotations

import argparse

from depmicro.core.cli.common import alpha, count, data_args, nonneg, ratio, seed
from depmicro.core.data.baselines import BASELINES
from depmicro.core.data.evaluation import PROTOCOLS


def data_inspect(p: argparse.ArgumentParser) -> None:
    data_args(p)
    p.add_argument("--metadata", help="per-sample metadata table (first column: sample id)")


def baseline(p: argparse.ArgumentParser) -> None:
    data_args(p)
    p.add_argument("--method", required=True, choices=BASELINES)
    p.add_argument("--seed", type=seed, default=0, help="seed of the held-out masks (and of the imputer)")
    p.add_argument("--test-ratio", type=ratio, default=0.1, help="fraction of nonzero entries held out for test")
    p.add_argument("--val-ratio", type=ratio, default=0.1, help="fraction of the remaining nonzero entries held out for validation")
    p.add_argument("--protocol", choices=PROTOCOLS, default="paper", help="paper: normalize, then hold out; renormalized: hold out "
                   "on the counts, normalize each row over its observed entries (README, evaluation protocol)")
    p.add_argument("--max-iter", type=count, default=None,
                   help="rounds of iterative/missforest (default 10 / 3; 5 / 2 beyond 200 taxa), iterations per shrinkage of softimpute (default 100)")
    p.add_argument("--n-nearest-features", type=count, default=None,
                   help="predictors per taxon for iterative/missforest (default: all up to 200 taxa, else 200)")


def deps(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--seed", type=seed, default=0, help="seed of the permutations (and of the ksg jitter)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--out", default="deps.npz", help="output .npz (f_stat, f_pvalue, mi, dep, var_names; default deps.npz)")
    p.add_argument("--plot", metavar="DIR", help="write the top directed pairs and the MI network figures here")


def train(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML model config (e.g. studies/configs/tiny.yaml)")
    p.add_argument("--data", required=True, help="target data set (.h5ad, .csv or .tsv counts)")
    p.add_argument("--metadata", help="per-sample metadata table (first column: sample id)")
    p.add_argument("--pretrain", nargs="*", default=[], help="other data sets with the same taxa for VAE pretraining")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    p.add_argument("--seed", type=seed, help="seed of the model and of the held-out masks (overrides the config)")
    p.add_argument("--protocol", choices=PROTOCOLS, help="paper: normalize, then hold out; renormalized: hold out on the counts, "
                   "normalize each row over its observed entries (overrides the config)")
    p.add_argument("--out", required=True, help="model directory to write (built aside, then renamed into place)")
    p.add_argument("--max-memory", metavar="SIZE", help="memory cap, e.g. 4GB: training micro-batches (gradient "
                   "accumulation keeps batch_size) and imputation batches are sized to fit (overrides the config)")


def impute(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory written by `depmicro train`")
    p.add_argument("--data", required=True, help="counts with missing entries as NaN/empty cells")
    p.add_argument("--metadata", help="per-sample metadata table (first column: sample id)")
    p.add_argument("--out", required=True, help="output .h5ad, .csv or .tsv (normalized space, Eq. 10-11)")
    p.add_argument("--zeros", action="store_true", help="also treat every zero count as missing")
    p.add_argument("--uncertainty", type=int, nargs="?", const=8, metavar="N",
                   help="also write each entry's std over N diffusion draws (default 8; 0 on observed entries): "
                        "AnnData layer 'std', or <out>.std.csv/.tsv beside a CSV/TSV")
