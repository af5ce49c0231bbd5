"""The `depmicro` command: one COMMANDS table, the parser built from it, the error convention and output.

Each package contributes its own table through the `depmicro.commands` entry-point group
(pyproject.toml: the core's is COMMANDS below, studies' and analysis' are in their cli.py), so the
core never imports Ray or MLflow. A row names its handler as "module:function"; `load` imports it
when the command runs, which keeps `depmicro --help` free of torch, Ray and MLflow while the handler
modules import what they need at module level.

A handler returns a dict (printed as JSON with --json, else as `key: value` lines) or None. A
DepmicroError anywhere becomes one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from importlib.metadata import entry_points
from typing import Any, Iterable

from depmicro.core.cli import arguments, model_checks
from depmicro.core.cli.common import Command, Handler
from depmicro.core.errors import DepmicroError

# Every command of the core, in the order `depmicro --help` lists them.
COMMANDS = (
    Command("data", "inspect a data set"),
    Command("data inspect", "sizes, sparsity and empty samples of a count table", "depmicro.core.cli.data:inspect",
            arguments.data_inspect),
    Command("baseline", "score a classical imputer under the held-out protocol", "depmicro.core.cli.data:baseline",
            arguments.baseline),
    Command("deps", "F-statistics, mutual information and the Dep mask of a count table", "depmicro.core.cli.deps:deps",
            arguments.deps),
    Command("train", "train DepMicroDiff under the held-out protocol; prints val and test metrics",
            "depmicro.core.cli.model:train", arguments.train, model_checks.check_train),
    Command("impute", "fill missing entries (NaN/empty cells, or zeros with --zeros) with a trained model",
            "depmicro.core.cli.model:impute", arguments.impute, model_checks.check_impute),
)

__all__ = ["COMMANDS", "Command", "Handler", "build_parser", "emit", "load", "main"]


def load(target: str) -> Handler:
    """The handler a table names as "package.module:function", imported now (the one lazy import)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def tables() -> list[tuple[Command, ...]]:
    """The COMMANDS tables of every installed package (entry points), in name order, each once."""
    seen, out = set(), []
    for ep in sorted(entry_points(group="depmicro.commands"), key=lambda e: e.name):
        if ep.value not in seen:
            seen.add(ep.value)
            out.append(ep.load())
    return out


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line too, like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(commands: Iterable[Command] | None = None) -> argparse.ArgumentParser:
    """The parser of `commands` (default: every installed table); nothing a handler needs is imported."""
    parser = _Parser(prog="depmicro", description="DepMicroDiff imputation and distributed hyperparameter studies")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    rows = commands if commands is not None else [c for table in tables() for c in table]
    for cmd in rows:
        group, _, action = cmd.name.partition(" ")
        if not cmd.handler:  # a group: its actions are the rows named "<group> <action>"
            p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
            groups[cmd.name] = p.add_subparsers(dest=f"{cmd.name}_command", metavar="ACTION", required=True)
            continue
        p = (groups[group] if action else sub).add_parser(action or group, help=cmd.help, description=cmd.help)
        if cmd.json_flag:
            p.add_argument("--json", action="store_true", help="print results as one JSON object")
        if cmd.arguments is not None:
            cmd.arguments(p)
        p.set_defaults(_command=cmd, command=cmd.name)
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
    cmd: Command | None = getattr(args, "_command", None)
    if cmd is None:
        parser.print_help()
        return 2
    try:
        if cmd.check is not None:
            cmd.check(args)
        result = load(cmd.handler)(args)
    except DepmicroError as exc:
        print(f"depmicro {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the disk filled or a folder turned read-only after the checks: still one line
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"depmicro {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a study's driver says how to resume in the message
        print(f"depmicro {args.command}: interrupted" + (f"; {exc}" if str(exc) else ""), file=sys.stderr)
        return 130
    if result is not None:
        try:
            emit(result, getattr(args, "json", False))
            sys.stdout.flush()
        except BrokenPipeError:  # `depmicro ... | head`: the reader left; the work is done and its files written
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
    return 0
