"""`depmicro data inspect` and `depmicro baseline` (arguments: cli/arguments.py). Loaded only when
one of them runs, so pandas and scikit-learn stay out of `depmicro --help`."""
from __future__ import annotations

import argparse
import sys

from depmicro.core.data import inspect as inspect_dataset
from depmicro.core.data import load_dataset
from depmicro.core.data.baselines import impute_with_baseline, make_baseline
from depmicro.core.data.evaluation import evaluate, make_split, protocol_matrix, undefined_score_note


def inspect(args: argparse.Namespace) -> dict:
    return inspect_dataset(load_dataset(args.path, metadata=args.metadata, orientation=args.orientation))


def baseline(args: argparse.Namespace) -> dict:
    opts = {"max_iter": args.max_iter, "n_nearest_features": args.n_nearest_features}
    make_baseline(args.method, **opts)  # validates the name and options before reading data
    ds = load_dataset(args.path, orientation=args.orientation)
    split = make_split(ds.counts, seed=args.seed, test_ratio=args.test_ratio, val_ratio=args.val_ratio)
    Y = protocol_matrix(ds.counts, split, args.protocol)
    filled, seconds = impute_with_baseline(args.method, Y, split.observed, seed=args.seed, **opts)
    metrics = evaluate(Y, filled, split.test)
    note = undefined_score_note(metrics)
    if note:
        print(note, file=sys.stderr)
    return {"dataset": ds.name, "method": args.method, "seed": args.seed, "protocol": args.protocol, **metrics, "seconds": round(seconds, 3)}
