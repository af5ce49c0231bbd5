"""The read side of a study's MLflow record (what tracking.py writes): the parent run's state and
every trial and baseline run, as `depmicro study status` shows them and the runner counts them."""
from __future__ import annotations

from depmicro.core.errors import DepmicroError
from depmicro.core.model.config import config_from_dict, config_to_dict
from depmicro.studies.inference import best_setting
from depmicro.studies.schema import (KIND_BASELINE, KIND_STUDY, KIND_TRIAL, TAG_DATASET, TAG_EPOCHS_DONE, TAG_ERROR,
                                     TAG_METHOD, TAG_NODE_ID, TAG_SEED, TAG_STATUS, TAG_STOPPED_ON, TAG_TRIAL_ID,
                                     TAG_VARIANT, experiment_name, sqlite_path)
from depmicro.studies.tracking import client_for, find_runs


def study_status(study: str, tracking_uri: str) -> dict:
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
