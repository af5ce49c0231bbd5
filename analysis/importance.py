"""Which settings mattered: Optuna's fANOVA on the finished trials, and the metric against single
settings (AR decay as in the paper's Fig. 10, sampling fraction, dependency thresholds).

The trials were run by Ray Tune, not Optuna, so an in-memory Optuna study is rebuilt from them
(`optuna.trial.create_trial` + `add_trial`) with each varying setting as a distribution spanning
the values actually tried. Importance is computed per dataset: metric scales differ between
datasets, and pooling them would credit the dataset rather than the settings.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

SWEEP_PARAMS = ("ar_decay", "sampling_fraction", "f_threshold", "mi_threshold")
DEFAULT_TARGET = "best_val_pcc_per_microbe"
MIN_TRIALS = 3


def _distribution(values: pd.Series):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    v = values.dropna()
    if v.map(lambda x: isinstance(x, (bool, np.bool_))).all() or v.dtype == object:
        return CategoricalDistribution(sorted({x.item() if hasattr(x, "item") else x for x in v}, key=str))
    lo, hi = float(v.min()), float(v.max())
    if np.all(np.equal(np.mod(v.to_numpy(float), 1), 0)) and pd.api.types.is_integer_dtype(v.dtype):
        return IntDistribution(int(lo), int(hi), log=lo > 0 and hi / lo >= 100)
    return FloatDistribution(lo, hi, log=lo > 0 and hi / lo >= 100)


def _value(x):
    return x.item() if hasattr(x, "item") else x


def param_importance(trials: pd.DataFrame, params: list[str], target: str = DEFAULT_TARGET, seed: int = 0) -> pd.DataFrame:
    """fANOVA importance (normalized to sum 1) of each varying setting, per dataset.

    Returns rows (dataset, param, importance, n_trials); empty when fewer than 3 trials with a
    finite target exist for a dataset or nothing varies there.
    """
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    if trials.empty or target not in trials:
        return pd.DataFrame(columns=["dataset", "param", "importance", "n_trials"])
    for dataset, g in trials.groupby("dataset", sort=True):
        g = g[np.isfinite(pd.to_numeric(g[target], errors="coerce"))]
        varying = [p for p in params if f"param.{p}" in g and g[f"param.{p}"].astype(str).nunique() > 1
                   and g[f"param.{p}"].notna().all()]
        if len(g) < MIN_TRIALS or not varying:
            continue
        dists = {p: _distribution(g[f"param.{p}"]) for p in varying}
        study = optuna.create_study(direction="maximize")
        for _, r in g.iterrows():
            study.add_trial(optuna.trial.create_trial(
                params={p: _value(r[f"param.{p}"]) for p in varying}, distributions=dists, value=float(r[target])))
        imp = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
        rows += [{"dataset": dataset, "param": p, "importance": float(v), "n_trials": len(g)} for p, v in imp.items()]
    return pd.DataFrame(rows, columns=["dataset", "param", "importance", "n_trials"])


def sweep(results: pd.DataFrame, param: str, metric: str = "test_pcc_per_microbe") -> pd.DataFrame:
    """Metric against one setting: rows (dataset, value, mean, std, n) over trials sharing the value.
    In an ablation study only the arms labelled `<param>=...` count, so other arms (left at the base
    value of `param`) do not pile onto one point."""
    col = f"param.{param}"
    if results.empty or col not in results or metric not in results:
        return pd.DataFrame(columns=["dataset", "value", "mean", "std", "n"])
    if "label" in results:  # one-factor ablation: only the arms that set this factor (others sit at its base value)
        own = results["label"].astype(str).str.startswith(f"{param}=")
        if own.any():
            results = results[own]
    r = results[[col, "dataset", metric]].dropna()
    rows = []
    for (dataset, value), g in r.groupby(["dataset", col], sort=True):
        v = g[metric].astype(float)
        rows.append({"dataset": dataset, "value": _value(value), "mean": float(v.mean()),
                     "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan, "n": len(v)})
    return pd.DataFrame(rows, columns=["dataset", "value", "mean", "std", "n"])


def sweeps(results: pd.DataFrame, metric: str = "test_pcc_per_microbe") -> dict[str, pd.DataFrame]:
    """The sweeps worth plotting: settings from SWEEP_PARAMS that took at least two values."""
    out = {}
    for p in SWEEP_PARAMS:
        s = sweep(results, p, metric)
        if len(s) and s.groupby("dataset")["value"].nunique().max() > 1:
            out[p] = s
    return out
