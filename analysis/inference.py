"""Inference settings across a study: one row per (finished trial, setting), and the
quality-vs-seconds Pareto front (studies/inference.py names the metrics).

The front is drawn per data set on validation quality (what a setting is chosen by); test scores
ride along in the table so the choice can be checked, never made, on them.
"""
from __future__ import annotations

import pandas as pd

from depmicro.analysis.runs import StudyRuns
from depmicro.core.data.evaluation import direction
from depmicro.studies.inference import PREFIX, best_setting, pareto_front, parse_label, trial_settings


def val_metric(study: StudyRuns) -> str:
    """The METRICS name the study selected on (its `metric:` key, on the parent run)."""
    metric = study.parent.get("param.metric") if study.parent is not None else None
    metric = metric if isinstance(metric, str) else "val_pcc_per_microbe"
    return metric.removeprefix("best_").removeprefix("val_")


def table(study: StudyRuns) -> pd.DataFrame:
    """Finished trials x inference settings, with `pareto` (per data set) and `trial_best` flags."""
    fin = study.finished
    cols = [c for c in fin.columns if c.startswith(PREFIX)]
    if fin.empty or not cols:
        return pd.DataFrame()
    m = val_metric(study)
    q, t = f"val_{m}", f"test_{m}"
    rows = []
    for _, r in fin.iterrows():
        metrics = {c: r[c] for c in cols if pd.notna(r[c])}
        best = best_setting(metrics, m)
        for lab, scores in trial_settings(metrics).items():
            if q not in scores or "seconds" not in scores:
                continue
            rows.append({"trial_id": r["trial_id"], "dataset": r["dataset"], "seed": r["seed"], "setting": lab,
                         **parse_label(lab), q: scores[q], t: scores.get(t), "seconds": scores["seconds"],
                         "trial_best": best is not None and best["label"] == lab})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["pareto"] = False
    higher = direction(m) == "max"
    for _, g in df.groupby("dataset"):
        flags = pareto_front(list(zip(g[q].astype(float), g["seconds"].astype(float))), higher_is_better=higher)
        df.loc[g.index, "pareto"] = flags
    return df.sort_values(["dataset", "seconds"]).reset_index(drop=True)
