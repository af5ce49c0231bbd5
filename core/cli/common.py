"""What every command shares: registration with --json, and argument types that reject bad values
in one line (argparse turns an ArgumentTypeError into `depmicro CMD: error: ...`, exit 2)."""
from __future__ import annotations

import argparse
import math
from typing import Callable

Handler = Callable[[argparse.Namespace], "dict | None"]


def add_command(sub: argparse._SubParsersAction, name: str, handler: Handler, help: str, json_flag: bool = True) -> argparse.ArgumentParser:
    """Register a subcommand; every command that prints results gets --json."""
    p = sub.add_parser(name, help=help, description=help)
    if json_flag:
        p.add_argument("--json", action="store_true", help="print results as one JSON object")
    p.set_defaults(_handler=handler)
    return p


def data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help=".h5ad, .csv or .tsv count table")
    p.add_argument("--orientation", default="auto", choices=["auto", "samples", "taxa"], help="rows are samples or taxa (auto-detected by default)")


def ratio(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {v}")
    return v


def nonneg(name: str):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} is not a number: {text!r}") from None
        if not math.isfinite(v) or v < 0:
            raise argparse.ArgumentTypeError(f"{name} must be a finite number >= 0, not {text}")
        return v
    return parse


def alpha(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {text}")
    return v


def count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {v}")
    return v
