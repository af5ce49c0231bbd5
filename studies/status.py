"""The read side of a study's MLflow record (what tracking.py writes): the parent run's state and
every trial and baseline run, as `depmicro study status` shows them and the runner counts them.

Why apart from tracking.py and the runner: they import Ray (a Tune callback, the driver) and torch;
reading a study needs MLflow and the state file only, so `study status` loads neither."""
from __future__ import annotations

import argparse
import logging
import os

from depmicro.core.errors import DepmicroError
from depmicro.core.model.config import config_from_dict, config_to_dict
from depmicro.studies.inference import best_setting
from depmicro.studies.schema import (KIND_BASELINE, KIND_STUDY, KIND_TRIAL, TAG_DATASET, TAG_EPOCHS_DONE, TAG_ERROR,
                                     TAG_METHOD, TAG_NODE_ID, TAG_SEED, TAG_STATUS, TAG_STOPPED_ON, TAG_TRIAL_ID,
                                     TAG_VARIANT, check_tracking_uri, default_tracking_uri, experiment_name,
                                     normalize_tracking_uri, run_filter, sqlite_path)
from depmicro.studies.state import STATE_FILE, experiment_dir, read_state


def client_for(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # schema set-up chatter is not progress
    # against a tracking server MLflow writes run links to stdout when a run ends; stdout carries --json
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    return MlflowClient(tracking_uri=tracking_uri)


def find_runs(client, experiment_id: str, study: str, kind: str, **tags: str) -> list:
    flt = run_filter(study, kind, **tags)
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=flt, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def study_status(name: str, tracking_uri: str | None = None, storage: str | os.PathLike | None = None) -> dict:
    """The study from MLflow (every trial the driver saw) and its state file, as `study status` shows it."""
    exp = experiment_dir(name, storage)
    state = read_state(exp) if (exp / STATE_FILE).exists() else None
    uri = tracking_uri or (state["tracking_uri"] if state else None)
    uri = check_tracking_uri(normalize_tracking_uri(uri or default_tracking_uri()))
    out = recorded_status(name, uri)
    out["storage"] = str(exp)
    out["resumable"] = state is not None and out["state"] != "FINISHED"  # Tune's state lives beside it
    if state is not None:
        out["expected_trials"] = state["spec_obj"].n_trials()
        out["stopped_on"] = out.get("stopped_on") or state.get("stopped_on")
        out["provenance"] = state.get("provenance")
        if state.get("confirm"):
            out["confirm"] = state["confirm"]
        out["data_changed_on_resume"] = sum(bool(r.get("data_changed")) for r in state.get("resumes", []))
    return out


def recorded_status(study: str, tracking_uri: str) -> dict:
    """The study as MLflow records it: parent run state, every trial run, baselines."""
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        raise DepmicroError(f"no study {study!r}: no MLflow database at {tracking_uri} (run it, or pass --tracking-uri)")
    client = client_for(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name(study))
    if exp is None:
        raise DepmicroError(f"no study {study!r} in {tracking_uri} (no MLflow experiment {experiment_name(study)!r})")
    parents = find_runs(client, exp.experiment_id, study, KIND_STUDY)
    metric = parents[0].data.params.get("metric", "val_pcc_per_microbe") if parents else "val_pcc_per_microbe"
    val_metric = metric.removeprefix("best_").removeprefix("val_")
    trials = []
    for run in find_runs(client, exp.experiment_id, study, KIND_TRIAL):
        tags = run.data.tags
        try:
            config = config_to_dict(config_from_dict(dict(run.data.params)))
        except DepmicroError:
            config = dict(run.data.params)
        trials.append({
            "trial_id": tags.get(TAG_TRIAL_ID), "status": tags.get(TAG_STATUS, "UNKNOWN"),
            "dataset": tags.get(TAG_DATASET), "seed": _int_or_none(tags.get(TAG_SEED)),
            "variant": tags.get(TAG_VARIANT), "node_id": tags.get(TAG_NODE_ID),
            "epochs_done": _int_or_none(tags.get(TAG_EPOCHS_DONE)),
            "stopped_on": tags.get(TAG_STOPPED_ON),
            "run_id": run.info.run_id, "config": config, "metrics": dict(run.data.metrics),
            "inference_best": best_setting(dict(run.data.metrics), val_metric),
        })
    trials.sort(key=lambda t: t["trial_id"] or "")
    baselines = [{"method": r.data.tags.get(TAG_METHOD), "dataset": r.data.tags.get(TAG_DATASET),
                  "seed": _int_or_none(r.data.tags.get(TAG_SEED)), "metrics": dict(r.data.metrics)}
                 for r in find_runs(client, exp.experiment_id, study, KIND_BASELINE)]
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    return {
        "name": study, "tracking_uri": tracking_uri, "experiment_id": exp.experiment_id,
        "state": parents[0].info.status if parents else "UNKNOWN", "counts": counts,
        "error": parents[0].data.tags.get(TAG_ERROR) if parents else None,
        "stopped_on": (parents[0].data.tags.get(TAG_STOPPED_ON) or None) if parents else None,
        "trials": trials, "baselines": baselines,
    }


def _int_or_none(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def status_command(args: argparse.Namespace) -> dict | None:
    """The handler of `depmicro study status` (studies/cli.py)."""
    st = study_status(args.name, tracking_uri=args.tracking_uri, storage=args.storage)
    if args.json:
        return st
    print(format_status(st))
    return None


def format_status(st: dict) -> str:
    """A table a person reads: one trial per line, the study's metric and test result."""
    counts = ", ".join(f"{v} {k}" for k, v in sorted(st["counts"].items())) or "no trials yet"
    expected = f" of {st['expected_trials']}" if "expected_trials" in st else ""
    stopped = f" (stopped on its {st['stopped_on'].replace('_', ' ')}; `study resume` continues it)" if st.get("stopped_on") else ""
    lines = [f"study {st['name']}: {st['state']}{stopped}; {len(st['trials'])}{expected} trial(s): {counts}",
             f"  mlflow {st['tracking_uri']}  storage {st['storage']}"]
    if st.get("error"):
        lines.insert(1, f"  driver failed: {st['error']}")
    head = f"  {'trial_id':<14} {'status':<10} {'dataset':<10} {'seed':>4} {'variant':<22} {'epochs':>7} {'best_val_pcc_pm':>15} {'test_pcc_pm':>11}"
    lines.append(head)
    for t in st["trials"]:
        m = t["metrics"]
        epochs = f"{t.get('epochs_done') or '-'}/{t['config'].get('epochs', '?')}"
        lines.append(f"  {str(t['trial_id']):<14} {t['status']:<10} {str(t['dataset']):<10} {str(t['seed']):>4} "
                     f"{str(t['variant'])[:22]:<22} {epochs:>7} {_f(m.get('best_val_pcc_per_microbe', m.get('val_pcc_per_microbe'))):>15} "
                     f"{_f(m.get('test_pcc_per_microbe')):>11}")
        if t.get("inference_best"):
            b = t["inference_best"]
            lines.append(f"  {'':<14} best inference setting {b['label']}: {b['metric']}={_f(b['value'])}"
                         + (f", {_f(b['seconds'])} s to impute" if "seconds" in b else ""))
    for b in st.get("baselines", []):
        lines.append(f"  baseline {b['method']:<9} {str(b['dataset']):<10} seed {b['seed']}: "
                     f"test_pcc_per_microbe={_f(b['metrics'].get('test_pcc_per_microbe'))}")
    return "\n".join(lines)


def _f(v) -> str:
    return "-" if v is None else f"{v:.4f}"
