"""A study's runs, read back from MLflow (layout: studies/schema.py), as pandas frames.

Everything downstream (tables, tests, figures, export) works from these frames, so a review never
needs the Ray results folder: the tracking store is the record of a study.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from depmicro.core.data.evaluation import METRICS
from depmicro.core.errors import DepmicroError
from depmicro.core.model.config import ModelConfig, config_to_dict
from depmicro.studies.schema import (ARTIFACT_PER_MICROBE, FINISHED, KIND_BASELINE, KIND_STUDY, KIND_TRIAL, TAG_PARENT,
                                     TAG_PREFIX, check_tracking_uri, default_tracking_uri, experiment_name, run_filter,
                                     sqlite_path, tag_column)
from depmicro.studies.spec import BASE_ARM


@dataclass
class StudyRuns:
    """One study as tidy frames: one row per run; metric columns without the `metrics.` prefix,
    config columns as `param.<field>` typed like the ModelConfig field."""

    name: str
    tracking_uri: str
    experiment_id: str
    parent: pd.Series | None
    trials: pd.DataFrame
    baselines: pd.DataFrame
    varying: list[str] = field(default_factory=list)  # config fields that differ between trials

    @property
    def finished(self) -> pd.DataFrame:
        """Trials that ran to the end and carry test metrics (ASHA-stopped ones do not)."""
        t = self.trials
        if t.empty or "test_pcc_per_microbe" not in t:
            return t.iloc[0:0]
        return t[(t["status"] == FINISHED) & t["test_pcc_per_microbe"].notna()]

    @property
    def ended(self) -> pd.DataFrame:
        """Finished plus ASHA-stopped trials: each has a real validation score for the settings it
        tried, which is what hyperparameter importance needs (failed trials have none)."""
        t = self.trials
        return t[t["status"].isin([FINISHED, "STOPPED"])] if len(t) else t


def base_arms(study: StudyRuns) -> list[str]:
    """Ablation arms that repeat the study's base configuration (e.g. `ar_decay=0.9` when the base
    has ar_decay 0.9): the full model the other arms are ablations of. Read from the flattened
    spec on the parent run (`base_config.<field>` params)."""
    if study.parent is None or study.trials.empty:
        return []
    defaults = config_to_dict(ModelConfig())
    out = []
    for label in sorted(study.trials["label"].dropna().unique()):
        if label == BASE_ARM:  # the spec collapsed the arms repeating the base configuration into this one
            out.insert(0, label)
            continue
        if "=" not in label:
            continue
        key, value = label.split("=", 1)
        base = study.parent.get(f"param.base_config.{key}")
        if not isinstance(base, str):  # not set in the study's base config: the ModelConfig default
            if key not in defaults:
                continue
            base = str(defaults[key])
        if (base.lower() if base in ("True", "False") else base) == value:
            out.append(label)
    return out


def set_tracking(uri: str | None) -> str:
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per downloaded run floods the terminal
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # run links on stdout would break --json
    uri = check_tracking_uri(uri or default_tracking_uri())
    db = sqlite_path(uri)
    if db is not None:
        if not db.is_file():  # MLflow would silently create an empty store and report "no such study"
            raise DepmicroError(f"no MLflow database at {db} (give --tracking-uri)")
    mlflow.set_tracking_uri(uri)
    return uri


def _typed_params(df: pd.DataFrame) -> pd.DataFrame:
    """MLflow stores params as strings; give each config field its dataclass type back."""
    types = {f.name: (f.type if isinstance(f.type, str) else f.type.__name__) for f in fields(ModelConfig)}
    out = {}
    for col in [c for c in df.columns if c.startswith("params.")]:
        name = col[len("params."):]
        s = df[col]
        kind = types.get(name)
        if kind in ("int", "float"):
            s = pd.to_numeric(s, errors="coerce")
        elif kind == "bool":
            s = s.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).lower() in ("true", "1"))
        out[f"param.{name}"] = s
    return pd.DataFrame(out, index=df.index)


def _tidy(raw: pd.DataFrame) -> pd.DataFrame:
    if raw.empty:
        return pd.DataFrame()
    tag = lambda k: raw.get(tag_column(TAG_PREFIX + k), pd.Series([None] * len(raw), index=raw.index))  # noqa: E731
    base = pd.DataFrame({
        "run_id": raw["run_id"],
        "run_status": raw["status"],
        "kind": tag("kind"),
        "trial_id": tag("trial_id"),
        "dataset": tag("dataset"),
        "seed": pd.to_numeric(tag("seed"), errors="coerce").astype("Int64"),
        "variant": tag("variant"),
        "method": tag("method"),
        "status": tag("status"),
        "git_commit": tag("git_commit"),
        "parent_run_id": raw.get(tag_column(TAG_PARENT)),
        "artifact_uri": raw["artifact_uri"],
        "start_time": raw["start_time"],
    })
    metrics = raw[[c for c in raw.columns if c.startswith("metrics.")]].rename(columns=lambda c: c[len("metrics."):])
    return pd.concat([base, metrics, _typed_params(raw)], axis=1)


def _short(v) -> str:
    """Searched floats are long; four significant digits tell configs apart in a table."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _label_trials(trials: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Give every trial the row label of the tables: its ablation arm, or for a search `config N`
    (numbered by first start), where trials of one config at several seeds share the label.
    `settings` spells out the values of the settings that differ between trials."""
    pcols = [c for c in trials.columns if c.startswith("param.") and c != "param.seed"]
    done = trials[trials["status"].isin([FINISHED, "STOPPED"])] if len(trials) else trials
    varying = sorted(c[len("param."):] for c in pcols if done[c].dropna().astype(str).nunique() > 1)
    trials = trials.copy()
    if not len(trials):
        trials["label"], trials["settings"] = pd.Series(dtype=str), pd.Series(dtype=str)
        return trials, varying
    trials["settings"] = trials.apply(lambda r: ", ".join(f"{p}={_short(r[f'param.{p}'])}" for p in varying), axis=1)
    search = trials["variant"].isna() | trials["variant"].isin(["", "search"])
    rank = trials.assign(_failed=~trials["status"].isin([FINISHED, "STOPPED"]))[search]
    order = rank.sort_values(["_failed", "start_time"]).drop_duplicates("settings")["settings"]
    number = {cfg: f"config {i + 1}" for i, cfg in enumerate(order)}
    trials["label"] = trials["variant"].where(~search, trials["settings"].map(number))
    if search.all() and len(number) == 1:
        trials["label"] = "DepMicroDiff"
    return trials, varying


def configs(study: "StudyRuns") -> pd.DataFrame:
    """Label -> settings of a search study's configs (empty for ablations, whose labels say it all)."""
    t = study.trials
    if t.empty or not t["label"].str.startswith("config ").any():
        return pd.DataFrame(columns=["label", "settings", "n_trials"])
    g = t[t["label"].str.startswith("config ")].groupby(["label", "settings"]).size().reset_index(name="n_trials")
    return g.assign(k=g["label"].str.split().str[1].astype(int)).sort_values("k").drop(columns="k").reset_index(drop=True)


def load_study(name: str, tracking_uri: str | None = None) -> StudyRuns:
    """Every run of study `name` from the tracking store; DepmicroError when there is no such study."""
    import mlflow

    uri = set_tracking(tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment_name(name))
    if exp is None:
        raise DepmicroError(f"no study {name!r} in {uri} (no MLflow experiment {experiment_name(name)!r})")
    raw = mlflow.search_runs(
        experiment_ids=[exp.experiment_id],
        filter_string=run_filter(name),
        output_format="pandas",
        max_results=100000,
    )
    runs = _tidy(raw)
    if runs.empty:
        raise DepmicroError(f"study {name!r} in {uri} has no runs")
    parent = runs[runs["kind"] == KIND_STUDY]
    trials, varying = _label_trials(runs[runs["kind"] == KIND_TRIAL].reset_index(drop=True))
    baselines = runs[runs["kind"] == KIND_BASELINE].reset_index(drop=True).copy()
    if len(baselines):
        baselines["label"] = baselines["method"].astype(str) + " (baseline)"
        baselines["status"] = baselines["status"].fillna(FINISHED)
    return StudyRuns(name=name, tracking_uri=uri, experiment_id=exp.experiment_id,
                     parent=parent.iloc[0] if len(parent) else None, trials=trials, baselines=baselines, varying=varying)


def results(study: StudyRuns) -> pd.DataFrame:
    """Finished trials and baselines in one frame: label, dataset, seed, test_<metric>."""
    cols = ["run_id", "kind", "label", "dataset", "seed", "artifact_uri"] + [f"test_{m}" for m in METRICS]
    parts = [study.finished]
    b = study.baselines
    if len(b) and "test_pcc_per_microbe" in b:
        parts.append(b[b["test_pcc_per_microbe"].notna()])
    parts = [p.reindex(columns=cols) for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


def per_microbe(run_ids: list[str], split: str = "test") -> dict[str, tuple[list[str], np.ndarray]]:
    """`per_microbe_pcc.json` of each run (missing artifacts are skipped): run id -> (taxa, PCC)."""
    import mlflow

    out: dict[str, tuple[list[str], np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rid in run_ids:
            try:
                path = mlflow.artifacts.download_artifacts(run_id=rid, artifact_path=ARTIFACT_PER_MICROBE,
                                                           dst_path=os.path.join(tmp, rid))
            except Exception:  # an artifact store raises many kinds; a run without the file is simply left out
                continue
            d = json.loads(Path(path).read_text())
            vals = np.array([np.nan if v is None else float(v) for v in d.get(split, [])], dtype=float)
            if len(vals) == len(d.get("var_names", [])):
                out[rid] = (list(d["var_names"]), vals)
    return out
