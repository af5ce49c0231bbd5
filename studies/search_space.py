"""The searched and ablated fields of a study file: typed distributions (optuna-style: uniform,
loguniform, int, choice, grid), the search algorithm, and the values each distribution can draw
(what studies/spec.py checks against ModelConfig before any trial runs)."""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any, Iterable

from depmicro.core.errors import DepmicroError
from depmicro.core.model.config import SEED_MAX, ModelConfig, config_from_dict
from depmicro.studies.fields import integer, number

PARAM_TYPES = ("uniform", "loguniform", "int", "choice", "grid")
SEARCH_ALGORITHMS = ("optuna", "random", "grid")
_MAX_VALIDATED_COMBOS = 4096


@dataclass(frozen=True)
class Param:
    """One searched ModelConfig field. `values` for choice/grid, `low`/`high` otherwise."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    values: tuple = ()


def parse_search_space(v: Any, fields: set[str]) -> dict[str, Param]:
    if not isinstance(v, dict):
        raise DepmicroError(f"search_space must be a mapping of config field -> distribution, not {v!r}")
    out: dict[str, Param] = {}
    for key, d in v.items():
        what = f"search_space.{key}"
        if key not in fields:
            hint = " (set by the study's test_ratio/val_ratio/protocol)" if key in ("test_ratio", "val_ratio", "protocol") else ""
            raise DepmicroError(f"{what}: not a searchable ModelConfig field{hint}")
        if isinstance(d, list):
            d = {"type": "choice", "values": d}
        if not isinstance(d, dict) or "type" not in d:
            raise DepmicroError(f"{what} must be a mapping with 'type' ({', '.join(PARAM_TYPES)}), not {d!r}")
        typ = d["type"]
        if typ not in PARAM_TYPES:
            raise DepmicroError(f"{what}.type must be one of {', '.join(PARAM_TYPES)}, not {typ!r}")
        allowed = {"type", "values"} if typ in ("choice", "grid") else {"type", "low", "high"}
        extra = sorted(set(d) - allowed)
        if extra:
            raise DepmicroError(f"{what}: unknown key {extra[0]!r} for type {typ} (expected {', '.join(sorted(allowed))})")
        if typ in ("choice", "grid"):
            vals = d.get("values")
            if not isinstance(vals, list) or not vals:
                raise DepmicroError(f"{what}.values must be a non-empty list")
            if any(isinstance(x, (dict, list)) for x in vals):
                raise DepmicroError(f"{what}.values must be plain values, not nested lists or mappings")
            out[key] = Param(key, typ, values=tuple(vals))
            continue
        if "low" not in d or "high" not in d:
            raise DepmicroError(f"{what}: type {typ} needs 'low' and 'high'")
        if typ == "int":
            low, high = integer(d["low"], f"{what}.low"), integer(d["high"], f"{what}.high")
        else:
            low, high = number(d["low"], f"{what}.low"), number(d["high"], f"{what}.high")
        if not low < high:
            raise DepmicroError(f"{what}: low ({low}) must be below high ({high})")
        if typ == "loguniform" and low <= 0:
            raise DepmicroError(f"{what}: loguniform needs low > 0, not {low}")
        out[key] = Param(key, typ, low=low, high=high)
    return out


def parse_ablate(v: Any, fields: set[str]) -> dict[str, list]:
    if not isinstance(v, dict):
        raise DepmicroError(f"ablate must be a mapping of config field -> list of values, not {v!r}")
    out = {}
    for key, vals in v.items():
        if key not in fields:
            raise DepmicroError(f"ablate.{key}: not a ModelConfig field")
        if not isinstance(vals, list) or not vals or any(isinstance(x, (dict, list)) for x in vals):
            raise DepmicroError(f"ablate.{key} must be a non-empty list of plain values")
        out[key] = list(vals)
    return out


def parse_search(v: Any) -> tuple[str, int]:
    if isinstance(v, str):
        v = {"algorithm": v}
    if not isinstance(v, dict):
        raise DepmicroError(f"search must be one of {', '.join(SEARCH_ALGORITHMS)} or a mapping with 'algorithm', not {v!r}")
    extra = sorted(set(v) - {"algorithm", "seed"})
    if extra:
        raise DepmicroError(f"search: unknown key {extra[0]!r} (known: algorithm, seed)")
    alg = v.get("algorithm", "optuna")
    if alg not in SEARCH_ALGORITHMS:
        raise DepmicroError(f"search algorithm must be one of {', '.join(SEARCH_ALGORITHMS)}, not {alg!r}")
    return alg, integer(v.get("seed", 0), "search.seed", minimum=0, maximum=SEED_MAX)


_MAX_INT_VALUES = 1000  # an int range is checked value by value up to this many values


def check_param_types(space: dict[str, Param]) -> None:
    """A continuous distribution for an integer, boolean or text field draws values the field cannot
    take (`hidden_dim: {type: uniform}` gives 37.4): refuse it by the field's declared type."""

    types = {f.name: str(f.type) for f in dataclasses.fields(ModelConfig)}
    for k, p in space.items():
        t = types[k]
        if p.type in ("uniform", "loguniform") and t != "float":
            kind = {"int": "an integer", "bool": "a true/false", "str": "a text"}.get(t, t)
            fix = "type int" if t == "int" else "type choice"
            raise DepmicroError(f"search_space.{k}: {k} is {kind} field; {p.type} draws fractions (use {fix})")
        if p.type == "int" and t not in ("int", "float"):
            raise DepmicroError(f"search_space.{k}: {k} is not a number field; use type choice")


def candidates(p: Param) -> list:
    """Every value a distribution can draw, where that is a finite list; else the interval's ends
    (every ModelConfig range rule is an interval, so the ends decide it for continuous draws)."""
    if p.values:
        return list(p.values)
    if p.type == "int" and p.high - p.low + 1 <= _MAX_INT_VALUES:
        return list(range(int(p.low), int(p.high) + 1))
    return [p.low, p.high]


def check_configs(base_config: dict, space: dict[str, Param], ablate: dict[str, list], arms: Iterable[dict],
                  settings: list[dict]) -> None:
    """Every value a trial can get must make a valid ModelConfig: fail now, not in trial 37 at 3 a.m.
    Each drawable value alone, every pair of searched fields (the rules that tie two fields, such
    as hidden_dim % n_heads, are pairwise), each ablation arm with each searched value, and the full
    product where it is small enough to enumerate. `settings`: the inference settings each value runs with."""
    def check(over: dict, where: str) -> None:
        try:
            config_from_dict({**base_config, **over})
        except DepmicroError as exc:
            hint = ""
            if any(isinstance(v, bool) for v in over.values()) and "must be a string" in str(exc):
                hint = " (YAML reads off/on/yes/no as booleans: quote it, e.g. \"off\")"
            raise DepmicroError(f"{where}: {exc}{hint}") from None

    cands = {k: candidates(p) for k, p in space.items()}
    for k, vals in cands.items():
        for c in vals:
            for s in settings:  # e.g. a searched timesteps below an inference sampling_fraction
                where = f"search_space.{k} value {c!r}" + (f" with inference {s}" if s else "")
                check({k: c, **s}, where)
    for k, vals in ablate.items():
        for c in vals:
            check({k: c}, f"ablate.{k} value {c!r}")
    combos = "search_space combination "
    for a, b in itertools.combinations(cands, 2):
        for va, vb in itertools.product(cands[a], cands[b]):
            check({a: va, b: vb}, f"{combos}{a}={va!r}, {b}={vb!r}")
    for arm in arms:
        for k, vals in cands.items():
            if k not in arm:
                for c in vals:
                    check({**arm, k: c}, "ablate " + ", ".join(f"{a}={v!r}" for a, v in arm.items()) + f" with search_space.{k}={c!r}")
    if 2 < len(cands) and math.prod(len(v) for v in cands.values()) <= _MAX_VALIDATED_COMBOS:
        keys = list(cands)
        for combo in itertools.product(*(cands[k] for k in keys)):
            over = dict(zip(keys, combo))
            check(over, combos + ", ".join(f"{k}={v!r}" for k, v in over.items()))
