"""Ablation comparisons over seeds: is an arm really worse than the reference, or is it noise?

Runs of one dataset share their held-out masks seed by seed, so arms are compared *paired* by
seed: a paired t-test and a Wilcoxon signed-rank test on the per-seed differences, the paired
Cohen's d (d_z = mean difference / sd of the differences) and a t-based 95 % CI of the mean
difference. t-test p-values are Holm-corrected across the comparisons of each metric.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from depmicro.core.data.evaluation import direction

COLUMNS = ["dataset", "metric", "label", "reference", "n_pairs", "mean", "mean_reference", "mean_diff",
           "ci_low", "ci_high", "cohens_d", "t", "p_ttest", "p_wilcoxon", "p_holm"]


def reference_label(results: pd.DataFrame, metric: str = "pcc_per_microbe") -> str:
    """The non-baseline arm with the best mean over datasets (the model the others are ablations of)."""
    col = f"test_{metric}"
    r = results[results["kind"] != "baseline"] if (results["kind"] != "baseline").any() else results
    per = r.groupby(["label", "dataset"])[col].mean().groupby("label").mean()
    return str(per.idxmin() if direction(metric) == "min" else per.idxmax())


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Statistics of a - b for paired samples (same seeds in the same order)."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    d = a - b
    n = len(d)
    out = {"n_pairs": n, "mean": float(a.mean()), "mean_reference": float(b.mean()), "mean_diff": float(d.mean()),
           "ci_low": math.nan, "ci_high": math.nan, "cohens_d": math.nan, "t": math.nan, "p_ttest": math.nan,
           "p_wilcoxon": math.nan}
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    if sd > 0:
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        out.update(ci_low=out["mean_diff"] - half, ci_high=out["mean_diff"] + half, cohens_d=out["mean_diff"] / sd)
        res = stats.ttest_rel(a, b)
        out.update(t=float(res.statistic), p_ttest=float(res.pvalue))
    else:
        out.update(ci_low=out["mean_diff"], ci_high=out["mean_diff"])
    if np.any(d != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small-n exact-distribution notes
            out["p_wilcoxon"] = float(stats.wilcoxon(a, b).pvalue)
    return out


def compare(results: pd.DataFrame, metrics: tuple[str, ...] = ("pcc_per_microbe",), reference: str | None = None) -> pd.DataFrame:
    """Every arm (baselines included) against `reference` on every dataset, paired by seed."""
    from statsmodels.stats.multitest import multipletests

    if results.empty:
        return pd.DataFrame(columns=COLUMNS)
    rows = []
    for metric in metrics:
        col = f"test_{metric}"
        ref = reference or reference_label(results, metric)
        for dataset, g in results.groupby("dataset", sort=True):
            piv = g.pivot_table(index="seed", columns="label", values=col, aggfunc="mean")
            if ref not in piv:
                continue
            for label in piv.columns:
                if label == ref:
                    continue
                pair = piv[[label, ref]].dropna()
                if len(pair) == 0:
                    continue
                rows.append({"dataset": dataset, "metric": metric, "label": label, "reference": ref,
                             **paired(pair[label].to_numpy(), pair[ref].to_numpy())})
    out = pd.DataFrame(rows, columns=COLUMNS[:-1])
    out["p_holm"] = math.nan
    for metric in metrics:  # one family of comparisons per metric
        ok = out["p_ttest"].notna() & (out["metric"] == metric)
        if ok.any():
            out.loc[ok, "p_holm"] = multipletests(out.loc[ok, "p_ttest"].to_numpy(), method="holm")[1]
    return out[COLUMNS]
