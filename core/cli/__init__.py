"""The `depmicro` command: the parser, the error convention and output. The core's commands are in
COMMANDS (one module per group); each package contributes its own through the `depmicro.commands`
entry-point group, so the core never imports Ray or MLflow.

A subcommand handler returns a dict (printed as JSON with --json, else as `key: value` lines)
or None. A DepmicroError anywhere becomes one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from importlib.metadata import entry_points
from typing import Any

from depmicro.core.cli import data, deps, model
from depmicro.core.cli.common import Handler, add_command
from depmicro.core.errors import DepmicroError

# Every command of the core, in the order `depmicro --help` lists them: one `register(sub)` per group.
# Studies and analysis add theirs through the `depmicro.commands` entry points (pyproject.toml), so
# the core never imports Ray or MLflow.
COMMANDS = (data.register, deps.register, model.register)

__all__ = ["COMMANDS", "Handler", "add_command", "build_parser", "emit", "main", "register"]


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
    except OSError as exc:  # the disk filled or a folder turned read-only after the checks: still one line
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"depmicro {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a study's driver says how to resume in the message
        print(f"depmicro {args.command}: interrupted" + (f"; {exc}" if str(exc) else ""), file=sys.stderr)
        return 130
    if result is not None:
        emit(result, getattr(args, "json", False))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """The core's entry point in the `depmicro.commands` group."""
    for add in COMMANDS:
        add(sub)
