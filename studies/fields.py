"""The value checks every part of a study file shares (numbers, integers, lists, durations, paths,
names) and the small settings more than one part uses (the scheduler, per-trial resources). Each
failure is one DepmicroError line naming the key; studies/spec.py prefixes the file."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depmicro.core.errors import DepmicroError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
SCHEDULERS = ("asha", "none")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class SchedulerSpec:
    type: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0


def number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise DepmicroError(f"{what} must be a number, not {v!r}")
    return float(v)


def integer(v: Any, what: str, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise DepmicroError(f"{what} must be an integer, not {v!r}")
    if minimum is not None and v < minimum:
        raise DepmicroError(f"{what} must be >= {minimum}, not {v}")
    if maximum is not None and v > maximum:
        raise DepmicroError(f"{what} must be <= {maximum}, not {v}")
    return v


def int_list(v: Any, what: str, minimum: int | None = None, maximum: int | None = None) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not v:
        raise DepmicroError(f"{what} must be a non-empty list of integers, not {v!r}")
    out = [integer(x, f"{what} entry", minimum, maximum) for x in v]
    if len(set(out)) != len(out):
        raise DepmicroError(f"{what} has a duplicate entry: {out}")
    return out


def duration(v: Any, what: str) -> float:
    """Seconds, from a number (seconds) or text like `90s`, `30m`, `2h`, `1.5h`."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd])\s*", v)
        if not m:
            raise DepmicroError(f"{what} must be seconds or a duration like 90s, 30m, 2h, not {v!r}")
        secs = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        secs = number(v, what)
    if secs <= 0:
        raise DepmicroError(f"{what} must be positive, not {v!r}")
    return secs


def path(v: Any, base_dir: Path, what: str, must_exist: bool = True) -> str:
    if not isinstance(v, str) or not v:
        raise DepmicroError(f"{what} must be a path, not {v!r}")
    p = Path(os.path.expanduser(v))
    p = p if p.is_absolute() else (base_dir / p)
    p = Path(os.path.normpath(p))
    if must_exist and not p.exists():
        raise DepmicroError(f"{what}: no such file {p}")
    return str(p)


def check_name(name: Any) -> str:
    """A study name as a path component: letters, digits, `_.-`, starting with a letter or digit."""
    if not isinstance(name, str) or not NAME.match(name):
        raise DepmicroError(f"study name must be letters, digits, '_', '.' or '-' (at most 100, no path "
                            f"separators or '..'), not {name!r}")
    return name


def scheduler(v: Any) -> SchedulerSpec:
    if isinstance(v, str) or v is None:
        v = {"type": v or "none"}
    if not isinstance(v, dict):
        raise DepmicroError(f"scheduler must be asha, none, or a mapping with 'type', not {v!r}")
    extra = sorted(set(v) - {"type", "grace_period", "reduction_factor"})
    if extra:
        raise DepmicroError(f"scheduler: unknown key {extra[0]!r} (known: type, grace_period, reduction_factor)")
    typ = v.get("type", "asha")
    if typ not in SCHEDULERS:
        raise DepmicroError(f"scheduler type must be one of {', '.join(SCHEDULERS)}, not {typ!r}")
    grace = integer(v.get("grace_period", 1), "scheduler.grace_period", minimum=1)
    rf = number(v.get("reduction_factor", 2), "scheduler.reduction_factor")
    if rf <= 1:
        raise DepmicroError(f"scheduler.reduction_factor must be > 1, not {rf}")
    return SchedulerSpec(typ, grace, rf)


def resources(v: Any) -> Resources:
    if not isinstance(v, dict):
        raise DepmicroError(f"resources_per_trial must be a mapping with cpu and gpu, not {v!r}")
    extra = sorted(set(v) - {"cpu", "gpu"})
    if extra:
        raise DepmicroError(f"resources_per_trial: unknown key {extra[0]!r} (known: cpu, gpu)")
    cpu = number(v.get("cpu", 1), "resources_per_trial.cpu")
    gpu = number(v.get("gpu", 0), "resources_per_trial.gpu")
    if cpu <= 0:
        raise DepmicroError(f"resources_per_trial.cpu must be > 0, not {cpu}")
    if gpu < 0 or (gpu > 1 and not float(gpu).is_integer()):
        raise DepmicroError(f"resources_per_trial.gpu must be a fraction in [0, 1] or a whole number, not {gpu}")
    return Resources(cpu, gpu)
