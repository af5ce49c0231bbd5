"""What every command shares: the entry of a COMMANDS table, and argument types that reject bad
values in one line (argparse turns an ArgumentTypeError into `depmicro CMD: error: ...`, exit 2)."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Callable

from depmicro.core.model.config import SEED_MAX

Handler = Callable[[argparse.Namespace], "dict | None"]


@dataclass(frozen=True)
class Command:
    """One row of a COMMANDS table.

    `handler` names the function as "package.module:function"; the dispatcher imports it only when
    the command runs, so the module holding it imports what it needs (torch, Ray, MLflow) at module
    level and `depmicro --help` still loads none of it. `arguments` and `check` run before that
    import: `check` refuses what it can cheaply (a bad study file) before the handler's module
    loads. A name with a space ("study run") is an action of the group named by its first word;
    a row without a handler is such a group.
    """

    name: str
    help: str
    handler: str = ""
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    check: Callable[[argparse.Namespace], None] | None = None
    json_flag: bool = True


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


def seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be from 0 to {SEED_MAX}, not {v}")
    return v
