"""`warm_start: {study: NAME, top_k: K}`: the K best configurations of an earlier study in the same
MLflow store become the first suggestions of this study's Optuna search.

They are enqueued (OptunaSearch points_to_evaluate) and trained again, not handed to TPE with
their old scores (evaluated_rewards): those scores were measured on the earlier study's data,
seeds and epochs, and told to TPE as this study's results they would be false whenever anything
differs. Each configuration is ranked by its mean over the earlier study's data sets and seeds.
"""
from __future__ import annotations

import math
from typing import Any

from depmicro.core.errors import DepmicroError
from depmicro.studies.confirm import rank_configs, score_key
from depmicro.studies.spec import Param, StudySpec
from depmicro.studies.status import recorded_status


def in_space(p: Param, v: Any) -> bool:
    if p.values:
        return v in p.values
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return False
    if p.type == "int" and float(v) != int(v):
        return False
    return p.low <= v <= p.high


def warm_points(spec: StudySpec, tracking_uri: str) -> list[dict]:
    """The earlier study's K best configurations over this study's searched fields, best first;
    DepmicroError (one line) when one falls outside this study's search space."""
    ws = spec.warm_start
    try:
        earlier = recorded_status(ws.study, tracking_uri)
    except DepmicroError as exc:
        raise DepmicroError(f"warm_start: {exc}") from None
    try:
        ranked = rank_configs(earlier["trials"], list(spec.search_space), spec.metric, spec.mode)
    except DepmicroError as exc:
        raise DepmicroError(f"warm_start: study {ws.study!r}: {exc}") from None
    if not ranked:
        raise DepmicroError(f"warm_start: study {ws.study!r} has no finished trial with {score_key(spec.metric)}")
    points = [r["config"] for r in ranked[:ws.top_k]]
    for i, point in enumerate(points):
        for k, v in point.items():
            p = spec.search_space[k]
            if not in_space(p, v):
                where = f"one of {list(p.values)}" if p.values else f"[{p.low:g}, {p.high:g}]"
                raise DepmicroError(f"warm_start: study {ws.study!r}'s #{i + 1} configuration has {k}={v!r}, outside "
                                    f"this study's search_space.{k} ({where}); widen it or lower warm_start.top_k")
    return points
