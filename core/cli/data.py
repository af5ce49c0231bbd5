"""`depmicro data inspect` and `depmicro baseline`. Heavy imports (pandas, scikit-learn) stay inside
the handlers so that `depmicro --help` stays fast."""
from __future__ import annotations

import argparse

from depmicro.core.cli.common import add_command, count, data_args, ratio
from depmicro.core.data.baselines import BASELINES
from depmicro.core.data.evaluation import PROTOCOLS


def _cmd_data(args: argparse.Namespace) -> dict:
    from depmicro.core.data import inspect, load_dataset

    return inspect(load_dataset(args.path, metadata=args.metadata, orientation=args.orientation))


def _cmd_baseline(args: argparse.Namespace) -> dict:
    from depmicro.core.data.baselines import impute_with_baseline, make_baseline
    from depmicro.core.data import load_dataset
    from depmicro.core.data.evaluation import evaluate, make_split, protocol_matrix

    opts = {"max_iter": args.max_iter, "n_nearest_features": args.n_nearest_features}
    make_baseline(args.method, **opts)  # validates the name and options before reading data
    ds = load_dataset(args.path, orientation=args.orientation)
    split = make_split(ds.counts, seed=args.seed, test_ratio=args.test_ratio, val_ratio=args.val_ratio)
    Y = protocol_matrix(ds.counts, split, args.protocol)
    filled, seconds = impute_with_baseline(args.method, Y, split.observed, seed=args.seed, **opts)
    metrics = evaluate(Y, filled, split.test)
    return {"dataset": ds.name, "method": args.method, "seed": args.seed, "protocol": args.protocol, **metrics, "seconds": round(seconds, 3)}


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="inspect a data set")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = add_command(dsub, "inspect", _cmd_data, "sizes, sparsity and empty samples of a count table")
    data_args(p)
    p.add_argument("--metadata", help="per-sample metadata table (first column: sample id)")
    p.set_defaults(command="data inspect")

    p = add_command(sub, "baseline", _cmd_baseline, "score a classical imputer under the held-out protocol")
    data_args(p)
    p.add_argument("--method", required=True, choices=BASELINES)
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out masks (and of the imputer)")
    p.add_argument("--test-ratio", type=ratio, default=0.1, help="fraction of nonzero entries held out for test")
    p.add_argument("--val-ratio", type=ratio, default=0.1, help="fraction of the remaining nonzero entries held out for validation")
    p.add_argument("--protocol", choices=PROTOCOLS, default="paper", help="paper: normalize, then hold out; renormalized: hold out "
                   "on the counts, normalize each row over its observed entries (README, evaluation protocol)")
    p.add_argument("--max-iter", type=count, default=None,
                   help="rounds of iterative/missforest (default 10 / 3; 5 / 2 beyond 200 taxa), iterations per shrinkage of softimpute (default 100)")
    p.add_argument("--n-nearest-features", type=count, default=None,
                   help="predictors per taxon for iterative/missforest (default: all up to 200 taxa, else 200)")
