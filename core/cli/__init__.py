"""The `depmicro` command. Each package contributes its subcommands through the
`depmicro.commands` entry-point group, so the core never imports Ray or MLflow.

A subcommand handler returns a dict (printed as JSON with --json, else as `key: value` lines)
or None. A DepmicroError anywhere becomes one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from importlib.metadata import entry_points
from typing import Any, Callable

from depmicro.core.errors import DepmicroError

Handler = Callable[[argparse.Namespace], "dict | None"]


def add_command(sub: argparse._SubParsersAction, name: str, handler: Handler, help: str, json_flag: bool = True) -> argparse.ArgumentParser:
    """Register a subcommand; every command that prints results gets --json."""
    p = sub.add_parser(name, help=help, description=help)
    if json_flag:
        p.add_argument("--json", action="store_true", help="print results as one JSON object")
    p.set_defaults(_handler=handler)
    return p


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line too, like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="depmicro", description="DepMicroDiff imputation and distributed hyperparameter studies")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    seen = set()
    for ep in sorted(entry_points(group="depmicro.commands"), key=lambda e: e.name):
        if ep.value in seen:
            continue
        seen.add(ep.value)
        ep.load()(sub)
    return parser


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return _clean(obj.item())
    return obj


def emit(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_clean(result), indent=2))
        return
    for k, v in result.items():
        if isinstance(v, float):
            v = f"{v:.4f}"
        elif isinstance(v, dict):
            v = json.dumps(_clean(v))
        print(f"{k}: {v}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_handler", None) is None:
        parser.print_help()
        return 2
    try:
        result = args._handler(args)
    except DepmicroError as exc:
        print(f"depmicro {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"depmicro {args.command}: interrupted", file=sys.stderr)
        return 130
    if result is not None:
        emit(result, getattr(args, "json", False))
    return 0


# --- core subcommands -------------------------------------------------------------------------

def _cmd_data(args: argparse.Namespace) -> dict:
    from depmicro.core.data import inspect, load_dataset

    return inspect(load_dataset(args.path, metadata=args.metadata, orientation=args.orientation))


def _cmd_baseline(args: argparse.Namespace) -> dict:
    from depmicro.core.data.baselines import impute_with_baseline, make_baseline
    from depmicro.core.data import load_dataset
    from depmicro.core.data.evaluation import evaluate, make_split

    make_baseline(args.method)  # validates the name before reading data
    ds = load_dataset(args.path, orientation=args.orientation)
    Y = ds.normalized
    split = make_split(Y, seed=args.seed, test_ratio=args.test_ratio, val_ratio=args.val_ratio)
    filled, seconds = impute_with_baseline(args.method, Y, split.observed, seed=args.seed)
    metrics = evaluate(Y, filled, split.test)
    return {"dataset": ds.name, "method": args.method, "seed": args.seed, **metrics, "seconds": round(seconds, 3)}


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help=".h5ad, .csv or .tsv count table")
    p.add_argument("--orientation", default="auto", choices=["auto", "samples", "taxa"], help="rows are samples or taxa (auto-detected by default)")


def _ratio(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {v}")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="inspect a data set")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = add_command(dsub, "inspect", _cmd_data, "sizes, sparsity and empty samples of a count table")
    _data_args(p)
    p.add_argument("--metadata", help="per-sample metadata table (first column: sample id)")
    p.set_defaults(command="data inspect")

    p = add_command(sub, "baseline", _cmd_baseline, "score a classical imputer under the held-out protocol")
    _data_args(p)
    p.add_argument("--method", required=True, choices=["mean", "knn", "iterative"])
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out masks (and of the imputer)")
    p.add_argument("--test-ratio", type=_ratio, default=0.1, help="fraction of nonzero entries held out for test")
    p.add_argument("--val-ratio", type=_ratio, default=0.1, help="fraction of the remaining nonzero entries held out for validation")

    # further core commands (deps, train, impute) register here from their own modules
    for mod in ("depmicro.core.cli.deps", "depmicro.core.cli.model"):
        try:
            module = __import__(mod, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
            continue
        module.register(sub)


if __name__ == "__main__":
    sys.exit(main())
