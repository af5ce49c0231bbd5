"""Seed-to-seed spread: how far apart two runs of one configuration land, so that importances,
sweeps and comparisons are read against it instead of ranking noise.

The spread of a metric on a dataset is the pooled within-configuration sample standard deviation
over the runs that share a configuration there (same label: replicates, confirmation seeds or
held-out seeds), sqrt(sum (n_g - 1) s_g^2 / sum (n_g - 1)). Nothing is measured when no
configuration ran twice on a dataset, and the report says so.

"Within the noise" is decided by WITHIN: the spread across configurations (the range of their
scores, or of their means) is below WITHIN seed standard deviations. Two runs of one configuration
differ by up to about 2.8 sd (95 %), so a range under 2 sd is what repeating one configuration gives.
"""
from __future__ import annotations

import math

import pandas as pd

WITHIN = 2.0
COLUMNS = ["dataset", "metric", "seed_sd", "n_repeated", "n_runs", "config_range", "n_configs", "within_noise"]


def seed_spread(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per dataset: pooled seed sd of `metric` (NaN when nothing repeated), how many configurations
    repeated (n_repeated) over how many runs, and the range of the configuration means."""
    rows = []
    if runs.empty or metric not in runs or "label" not in runs:
        return pd.DataFrame(columns=COLUMNS)
    r = runs[runs["kind"] != "baseline"] if "kind" in runs else runs
    for dataset, g in r.groupby("dataset", sort=True):
        v = g.assign(_v=pd.to_numeric(g[metric], errors="coerce")).dropna(subset=["_v"])
        groups = v.groupby("label")["_v"]
        n, var = groups.count(), groups.var(ddof=1)
        rep = n[n >= 2].index
        dof = float((n[rep] - 1).sum())
        sd = math.sqrt(float(((n[rep] - 1) * var[rep]).sum()) / dof) if dof > 0 else math.nan
        means = groups.mean()
        rng = float(means.max() - means.min()) if len(means) > 1 else math.nan
        rows.append({"dataset": dataset, "metric": metric, "seed_sd": sd, "n_repeated": int(len(rep)),
                     "n_runs": int(n[rep].sum()) if len(rep) else 0, "config_range": rng, "n_configs": int(len(means)),
                     "within_noise": within(rng, sd)})
    return pd.DataFrame(rows, columns=COLUMNS)


def within(value_range: float, seed_sd: float) -> bool:
    return bool(seed_sd == seed_sd and value_range == value_range and value_range < WITHIN * seed_sd)


def sentence(spread: pd.DataFrame, what: str, ranges: dict[str, float] | None = None) -> str:
    """Words for the report next to `what` (e.g. "the fANOVA importances"): the seed sd per dataset,
    and whether the spread across configurations (`ranges`, else the spread table's own range) is
    within it."""
    if spread.empty or spread["seed_sd"].isna().all():
        return (f"No seed-to-seed spread was measured (no configuration ran twice on a dataset), so {what} "
                f"cannot be told apart from noise; add replicates or seeds to measure it.")
    parts, inside = [], []
    for _, r in spread.iterrows():
        rng = (ranges or {}).get(r["dataset"], r["config_range"])
        if r["seed_sd"] != r["seed_sd"]:
            parts.append(f"{r['dataset']}: not measured")
            continue
        parts.append(f"{r['dataset']}: seed sd {r['seed_sd']:.4f} ({r['n_runs']} runs of {r['n_repeated']} "
                     f"configurations), spread across configurations {rng:.4f}")
        if within(rng, r["seed_sd"]):
            inside.append(r["dataset"])
    text = f"Seed-to-seed spread of {spread['metric'].iloc[0]} — " + "; ".join(parts) + "."
    if inside:
        text += (f" On {', '.join(inside)} the spread across configurations is within the seed-to-seed spread "
                 f"(under {WITHIN:g} seed sd): {what} there cannot be told from noise; only paired tests over shared seeds can.")
    return text
