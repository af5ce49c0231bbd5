"""`confirm: {top_k: K, seeds: [...]}`: after the search, the K best configurations are trained
again on held-out-mask seeds the search never saw, and the study's winner is the configuration
with the best one-sided 95 % bound over those seeds (Student t), not the luckiest search trial.

The search-phase score of the best configuration is biased upward (it was picked because it was
high, partly by chance: the winner's curse); the confirmation scores are not, and the table keeps
both side by side. Plain Python here; the runner runs the trials, status/analysis/export read
`confirm.json` (on the parent run and in the study state).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from depmicro.core.errors import DepmicroError
from depmicro.core.model.config import SEED_MAX
from depmicro.studies.fields import SchedulerSpec, int_list, integer

ARTIFACT = "confirm.json"
EXPERIMENT_SUFFIX = "-confirm"  # the Tune experiment of the confirmation trials, next to the study's
LEVEL = 0.95


@dataclass(frozen=True)
class ConfirmSpec:
    top_k: int
    seeds: tuple[int, ...]


def score_key(metric: str) -> str:
    """The per-trial number a configuration is ranked by: the best validation score it reached."""
    return metric if metric.startswith("best_") else f"best_{metric}"


def rank_configs(trials: list[dict], keys: list[str], metric: str, mode: str) -> list[dict]:
    """Finished trials grouped by their values of `keys`, best mean `score_key(metric)` first:
    [{"config", "mean", "n", "trial_ids"}]. Several data sets/seeds of one configuration are one entry."""
    key = score_key(metric)
    groups: dict[tuple, dict] = {}
    for t in trials:
        v = t["metrics"].get(key)
        if t["status"] != "TERMINATED" or v is None or not math.isfinite(v):
            continue
        missing = [k for k in keys if k not in t["config"]]
        if missing:
            raise DepmicroError(f"trial {t['trial_id']} has no {missing[0]!r} setting")
        point = {k: t["config"][k] for k in keys}
        g = groups.setdefault(tuple(sorted((k, repr(x)) for k, x in point.items())), {"config": point, "values": [], "trial_ids": []})
        g["values"].append(float(v))
        g["trial_ids"].append(t["trial_id"])
    sign = -1.0 if mode == "max" else 1.0
    out = [{"config": g["config"], "mean": sum(g["values"]) / len(g["values"]), "n": len(g["values"]),
            "trial_ids": g["trial_ids"]} for g in groups.values()]
    return sorted(out, key=lambda r: sign * r["mean"])


def bound(values: list[float], mode: str) -> tuple[float, float, float]:
    """(mean, sample sd, one-sided bound): the 95 % t-interval's lower end for a maximised metric,
    upper end for a minimised one; needs two values (else the bound is -inf/+inf)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan"), -math.inf if mode == "max" else math.inf
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + LEVEL / 2, n - 1) * sd / math.sqrt(n)
    return mean, sd, mean - half if mode == "max" else mean + half


def confirm_table(points: list[dict], runs: list[dict], metric: str, mode: str) -> dict:
    """points: [{"rank", "config", "search_mean", "search_n"}]; runs: confirmation trials as
    {"rank", "status", "metrics"}. Returns {"rows": [...], "winner": rank or None}."""
    key = score_key(metric)
    test_key = "test_" + metric.removeprefix("best_").removeprefix("val_")
    rows = []
    for p in points:
        mine = [r for r in runs if r["rank"] == p["rank"] and r["status"] == "TERMINATED" and key in r["metrics"]]
        vals = [float(r["metrics"][key]) for r in mine]
        tests = [float(r["metrics"][test_key]) for r in mine if test_key in r["metrics"]]
        row = {"rank": p["rank"], "config": p["config"], f"search_{key}": p["search_mean"], "search_n": p["search_n"],
               "confirm_n": len(vals)}
        if vals:
            mean, sd, b = bound(vals, mode)
            row.update({f"confirm_{key}": mean, f"confirm_{key}_sd": sd, f"confirm_{key}_bound95": b,
                        f"confirm_{test_key}": sum(tests) / len(tests) if tests else None})
        rows.append(row)
    scored = [r for r in rows if r["confirm_n"] and math.isfinite(r[f"confirm_{key}_bound95"])]
    winner = None
    if scored:
        pick = (max if mode == "max" else min)(scored, key=lambda r: r[f"confirm_{key}_bound95"])
        winner = pick["rank"]
    return {"metric": key, "mode": mode, "level": LEVEL, "rows": rows, "winner": winner,
            "winner_config": next((r["config"] for r in rows if r["rank"] == winner), None)}


def parse_confirm(v: Any, study_seeds: list[int]) -> ConfirmSpec | None:
    if v is None:
        return None
    if not isinstance(v, dict) or set(v) - {"top_k", "seeds"} or "seeds" not in v:
        raise DepmicroError(f"confirm must be a mapping with 'top_k' and 'seeds' (extra held-out seeds), not {v!r}")
    top_k = integer(v.get("top_k", 1), "confirm.top_k", minimum=1)
    seeds = int_list(v["seeds"], "confirm.seeds", minimum=0, maximum=SEED_MAX)
    if len(seeds) < 2:
        raise DepmicroError("confirm.seeds needs at least two seeds (a confidence bound needs a spread)")
    reused = sorted(set(seeds) & set(study_seeds))
    if reused:
        raise DepmicroError(f"confirm.seeds must be held-out seeds the search did not use; {reused[0]} is in seeds")
    return ConfirmSpec(top_k, tuple(seeds))


def confirm_spec(spec):
    """The study re-cut for its confirmation trials: the confirm seeds, one trial per (configuration,
    data set, seed), no early stopping, no baselines, nothing searched anew."""
    return dataclasses.replace(spec, seeds=list(spec.confirm.seeds), search="grid", scheduler=SchedulerSpec("none"),
                               num_samples=1, replicates=1, baselines=[], ablate={}, warm_start=None,
                               time_budget_s=None)
