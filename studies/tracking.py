"""MLflow logging for studies, from one place: a Ray Tune callback on the driver.

Trials never talk to MLflow. SQLite (the default store) does not take concurrent writers well, and
a worker on another node may not even reach the tracking store; the driver sees every result
anyway. The layout (experiment, tags, metric keys, artifacts) is studies/schema.py, which
analysis/runs.py reads back.

Idempotence across `study resume`: the parent run is found again by its study tag (TAG_STUDY) and
each trial's run by its trial id tag (TAG_TRIAL_ID), never created twice; per-epoch metrics are logged only for
epochs above the highest one already in MLflow, so a trial that re-reports an epoch after a
restore does not duplicate points; final metrics and artifacts are written when the run's status
tag is not yet terminal. The first loop step after a restore reconciles runs the killed driver
left RUNNING for trials Tune already counts as finished, and retires runs of trials Tune's saved
state never held (`_retire_orphans`).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback

from depmicro.core.errors import DepmicroError
from depmicro.core.model.config import config_to_dict
from depmicro.studies.inference import ARTIFACT as INFERENCE_ARTIFACT
from depmicro.studies.inference import PREFIX as INFERENCE_PREFIX
from depmicro.studies.spec import StudySpec
from depmicro.studies.schema import (ARTIFACT_CONFIG, ARTIFACT_MODEL, ARTIFACT_PER_MICROBE, ARTIFACT_PROVENANCE,
                                     ARTIFACT_RESUMES, ARTIFACT_SPEC, EPOCH_KEYS, FINAL_KEYS, KIND_BASELINE, KIND_CONFIRM,
                                     KIND_STUDY, KIND_TRIAL, TAG_CHECKPOINT_FALLBACK, TAG_CONFIRM_RANK, TAG_DATA_CHANGED, TAG_DATA_SHA256,
                                     TAG_RESUMES, TAG_STOPPED_ON, TAG_VERSION_PREFIX, TAG_DATASET, TAG_EPOCHS_DONE,
                                     TAG_ERROR, TAG_GIT_COMMIT, TAG_KIND, TAG_METHOD, TAG_NODE_ID, TAG_NODE_IP, TAG_PARENT,
                                     TAG_REPLICATE, TAG_RETRIES, TAG_SEED, TAG_STATUS, TAG_STUDY, TAG_TRIAL_ID,
                                     TAG_VARIANT, TERMINAL, ORPHANED, enable_wal, experiment_name, sqlite_path)
from depmicro.studies.status import client_for, find_runs
from depmicro.studies.trainable import FINAL_FILE, resolve_trial

MAX_PARAM_CHARS = 6000


def git_commit() -> str:
    """Best effort: the checkout the package runs from, else "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """SQLite stores keep artifacts next to the database (./mlartifacts for the default)."""
    db = sqlite_path(tracking_uri)
    return (db.resolve().parent / "mlartifacts" / experiment).as_uri() if db is not None else None


def ensure_experiment(client, study: str, tracking_uri: str) -> str:
    name = experiment_name(study)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise DepmicroError(f"MLflow experiment {name!r} is deleted; restore it or use another study name")
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_location(tracking_uri, name))


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, (list, tuple)) and d and any(isinstance(x, (dict, list, tuple)) for x in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        text = json.dumps(d) if isinstance(d, (list, tuple)) else str(d)
        out[prefix[:-1]] = text[:MAX_PARAM_CHARS]
    return out


def _log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def _log_metrics(client, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
    if items:
        client.log_batch(run_id, metrics=items)


def start_study(spec: StudySpec, tracking_uri: str, spec_text: str | None = None) -> tuple[str, str]:
    """Find or create the study's experiment and parent run; returns (experiment id, parent run id)."""
    client = client_for(tracking_uri)
    exp_id = ensure_experiment(client, spec.name, tracking_uri)
    enable_wal(tracking_uri)  # the store exists now; analyze may read it while the study writes
    found = find_runs(client, exp_id, spec.name, KIND_STUDY)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        if TAG_ERROR in found[0].data.tags:  # an earlier driver failed before its first trial
            client.delete_tag(run_id, TAG_ERROR)
        return exp_id, run_id
    run = client.create_run(exp_id, run_name=spec.name, tags={
        TAG_STUDY: spec.name, TAG_KIND: KIND_STUDY, TAG_GIT_COMMIT: git_commit()})
    _log_params(client, run.info.run_id, flatten(spec.to_dict()))
    client.log_text(run.info.run_id, spec_text if spec_text is not None else yaml.safe_dump(spec.to_dict(), sort_keys=False), ARTIFACT_SPEC)
    return exp_id, run.info.run_id


def log_provenance(tracking_uri: str, parent_run_id: str, prov: dict) -> None:
    """Data hashes, code commit and library versions on the parent run (tags to filter by, a JSON to read)."""
    client = client_for(tracking_uri)
    client.set_tag(parent_run_id, TAG_DATA_SHA256, json.dumps({Path(p).name: h for p, h in prov["data"].items()})[:5000])
    for lib, v in prov["versions"].items():
        client.set_tag(parent_run_id, f"{TAG_VERSION_PREFIX}{lib}", v)
    client.log_dict(parent_run_id, prov, ARTIFACT_PROVENANCE)


def log_resume(tracking_uri: str, parent_run_id: str, resumes: list[dict]) -> None:
    """Every `study resume` so far, with what differed; TAG_DATA_CHANGED once data changed."""
    client = client_for(tracking_uri)
    client.log_dict(parent_run_id, resumes, ARTIFACT_RESUMES)
    client.set_tag(parent_run_id, TAG_RESUMES, str(len(resumes)))
    if any(r.get("data_changed") for r in resumes):
        client.set_tag(parent_run_id, TAG_DATA_CHANGED, "true")


def set_stopped_on(tracking_uri: str, parent_run_id: str, reason: str | None) -> None:
    """TAG_STOPPED_ON names what ended the last session early (time_budget), or is empty."""
    client_for(tracking_uri).set_tag(parent_run_id, TAG_STOPPED_ON, reason or "")


def end_study(tracking_uri: str, parent_run_id: str, status: str = "FINISHED", reason: str = "") -> None:
    """Close the parent run; a failed driver leaves its reason in the TAG_ERROR tag."""
    client = client_for(tracking_uri)
    if reason:
        client.set_tag(parent_run_id, TAG_ERROR, reason[:500])
    client.set_terminated(parent_run_id, status)


def mark_interrupted(study: str, tracking_uri: str, experiment_id: str) -> None:
    """Runs of trials the driver stopped (Ctrl-C, an error) show as KILLED in MLflow until resumed;
    their status tag (TAG_STATUS) stays RUNNING: the trial is not over, `study resume` continues it."""
    client = client_for(tracking_uri)
    for run in find_runs(client, experiment_id, study, KIND_TRIAL) + find_runs(client, experiment_id, study, KIND_CONFIRM):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")


def log_baseline(spec: StudySpec, tracking_uri: str, experiment_id: str, parent_run_id: str, method: str,
                 dataset: str, seed: int, metrics: dict, per_microbe: dict) -> str:
    """One baseline child run per (method, dataset, seed); a finished one is not logged again."""
    client = client_for(tracking_uri)
    found = find_runs(client, experiment_id, spec.name, KIND_BASELINE, method=method, dataset=dataset, seed=seed)
    if found and found[0].info.status == "FINISHED":
        return found[0].info.run_id
    if found:
        run_id = found[0].info.run_id
    else:
        run_id = client.create_run(experiment_id, run_name=f"{method}-{dataset}-s{seed}", tags={
            TAG_PARENT: parent_run_id, TAG_STUDY: spec.name, TAG_KIND: KIND_BASELINE, TAG_METHOD: method,
            TAG_DATASET: dataset, TAG_SEED: str(seed), TAG_GIT_COMMIT: git_commit()}).info.run_id
    _log_metrics(client, run_id, {f"test_{k}": v for k, v in metrics.items()})
    client.log_dict(run_id, per_microbe, ARTIFACT_PER_MICROBE)
    client.set_terminated(run_id, "FINISHED")
    return run_id


class MlflowTracker(Callback):
    """Driver-side Tune callback writing one MLflow child run per trial (see the module docstring)."""

    def __init__(self, spec: StudySpec, tracking_uri: str, experiment_id: str, parent_run_id: str, commit: str | None = None,
                 kind: str = KIND_TRIAL):
        self.spec = spec
        self.kind = kind  # "trial" (the search) or "confirm" (re-runs of the best configurations on extra seeds)
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.commit = commit or git_commit()
        self._reset()

    def _reset(self) -> None:
        self._client = None
        self._runs: dict[str, str] = {}        # trial id -> run id
        self._max_step: dict[str, int] = {}    # run id -> highest epoch logged
        self._status: dict[str, str] = {}      # run id -> TAG_STATUS
        self._tagged_node: set[str] = set()
        self._reconciled = False

    def __getstate__(self) -> dict:  # the Tuner pickles its callbacks; keep only settings
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def client(self):
        if self._client is None:
            self._client = client_for(self.tracking_uri)
        return self._client

    # --- runs ---------------------------------------------------------------------------------

    def run_id(self, trial) -> str:
        tid = trial.trial_id
        if tid in self._runs:
            return self._runs[tid]
        found = find_runs(self.client, self.experiment_id, self.spec.name, self.kind, trial_id=tid)
        if found:
            run = found[0]
            rid = run.info.run_id
            hist = self.client.get_metric_history(rid, "train_loss")
            self._max_step[rid] = max((m.step for m in hist), default=0)
            self._status[rid] = run.data.tags.get(TAG_STATUS, "RUNNING")
        else:
            setup = resolve_trial(self.spec, trial.config)
            tags = {
                TAG_PARENT: self.parent_run_id, TAG_STUDY: self.spec.name, TAG_KIND: self.kind, TAG_TRIAL_ID: tid,
                TAG_DATASET: setup.dataset, TAG_SEED: str(setup.seed), TAG_VARIANT: setup.arm, TAG_STATUS: "RUNNING",
                TAG_GIT_COMMIT: self.commit, TAG_REPLICATE: str(setup.replicate),
            }
            if isinstance(trial.config.get("point"), dict):  # a confirmation trial
                tags[TAG_CONFIRM_RANK] = str(trial.config["point"]["rank"])
            rid = self.client.create_run(self.experiment_id, run_name=f"{setup.dataset}-s{setup.seed}-{tid}", tags=tags).info.run_id
            _log_params(self.client, rid, {k: str(v)[:MAX_PARAM_CHARS] for k, v in config_to_dict(setup.config).items()})
            self._max_step[rid] = 0
            self._status[rid] = "RUNNING"
        self._runs[tid] = rid
        return rid

    def _finalize(self, trial, status: str) -> None:
        rid = self.run_id(trial)
        if self._status.get(rid) in TERMINAL:
            # a driver killed between the tag and the run status leaves the run open: close it now
            if self.client.get_run(rid).info.status == "RUNNING":
                self.client.set_terminated(rid, "FAILED" if self._status[rid] == "ERROR" else "FINISHED")
            return
        result = trial.last_result or {}
        if status == "TERMINATED" and "test_pcc" not in result:
            status = "STOPPED"  # ended without the final report: stopped early by the scheduler
        self._log_epoch(rid, result)
        final = {k: result[k] for k in result if k in FINAL_KEYS or str(k).startswith(INFERENCE_PREFIX)}
        if status == "STOPPED":
            final = {k: v for k, v in final.items() if not k.startswith("test_")}
            final.setdefault("seconds", result.get("time_total_s", float("nan")))
        _log_metrics(self.client, rid, final)
        setup = resolve_trial(self.spec, trial.config)
        self.client.log_dict(rid, config_to_dict(setup.config), ARTIFACT_CONFIG)
        if status == "TERMINATED" and trial.checkpoint is not None:
            self._log_final_artifacts(rid, trial.checkpoint)
        if status == "ERROR" and getattr(trial, "error_file", None):
            self.client.set_tag(rid, TAG_ERROR, _first_error_line(trial))
        if isinstance(result.get("epoch"), int):
            self.client.set_tag(rid, TAG_EPOCHS_DONE, str(result["epoch"]))
        limit = self.spec.max_trial_seconds
        if status == "STOPPED" and limit and float(result.get("time_total_s", 0.0)) >= limit:
            self.client.set_tag(rid, TAG_STOPPED_ON, "max_trial_seconds")
        self.client.set_terminated(rid, "FAILED" if status == "ERROR" else "FINISHED")
        self.client.set_tag(rid, TAG_STATUS, status)  # last: the tag marks a run as complete
        self._status[rid] = status

    def _log_final_artifacts(self, rid: str, checkpoint) -> None:
        with checkpoint.as_directory() as d:
            d = Path(d)
            if not (d / FINAL_FILE).is_file():
                return
            if (d / "best_model").is_dir():
                self.client.log_artifacts(rid, str(d / "best_model"), ARTIFACT_MODEL)
            for name in (ARTIFACT_PER_MICROBE, INFERENCE_ARTIFACT):
                if (d / name).is_file():
                    self.client.log_artifact(rid, str(d / name))

    def _log_epoch(self, rid: str, result: dict) -> None:
        epoch = result.get("epoch")
        if not isinstance(epoch, int) or epoch <= self._max_step.get(rid, 0):
            return
        _log_metrics(self.client, rid, {k: result[k] for k in EPOCH_KEYS if k in result}, step=epoch)
        self._max_step[rid] = epoch

    # --- Tune hooks ---------------------------------------------------------------------------

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if self._reconciled:
            return
        self._reconciled = True
        self._retire_orphans({t.trial_id for t in trials})
        for t in trials:
            if t.status in ("TERMINATED", "ERROR"):
                self._finalize(t, t.status)

    def _retire_orphans(self, held: set[str]) -> None:
        """Close and soft-delete this study's unfinished runs whose trial ids Tune does not hold.

        Such a run belongs to a trial that started after Tune's last experiment snapshot, from a driver
        killed right then (with re-used workers the next trial starts the moment one ends). The
        restored search suggests that configuration again under a new trial id, so keeping the old run
        would count the trial twice and leave it RUNNING forever. Deleted, not erased: MLflow keeps it,
        tagged ORPHANED with the reason, and `mlflow runs restore` brings it back."""
        for run in find_runs(self.client, self.experiment_id, self.spec.name, self.kind):
            tid = run.data.tags.get(TAG_TRIAL_ID)
            if tid in held or run.data.tags.get(TAG_STATUS) in TERMINAL:
                continue
            rid = run.info.run_id
            self.client.set_tag(rid, TAG_ERROR, "orphaned: the driver stopped before Tune saved this trial; "
                                                "its configuration runs again under a new trial id")
            self.client.set_tag(rid, TAG_STATUS, ORPHANED)
            self.client.set_terminated(rid, "KILLED")
            self.client.delete_run(rid)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        rid = self.run_id(trial)
        if self._status.get(rid) in ("TERMINATED", "STOPPED"):
            return
        if self._status.get(rid) != "RUNNING":  # new, or ERROR and resumed by `study resume` (resume_errored)
            self.client.set_tag(rid, TAG_STATUS, "RUNNING")
            self._status[rid] = "RUNNING"
        self.client.update_run(rid, status="RUNNING")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        rid = self.run_id(trial)
        self._log_epoch(rid, result)
        if result.get("checkpoint_fallback"):  # a corrupt checkpoint was skipped on restore (studies/checkpoints.py)
            self.client.set_tag(rid, TAG_CHECKPOINT_FALLBACK, str(result["checkpoint_fallback"])[:500])
        node = result.get("node_id")
        if node and f"{rid}:{node}" not in self._tagged_node:  # a retried trial may land on another node
            self.client.set_tag(rid, TAG_NODE_ID, node)
            self.client.set_tag(rid, TAG_NODE_IP, str(result.get("node_ip", "")))
            self._tagged_node.add(f"{rid}:{node}")

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        rid = self.run_id(trial)
        self.client.set_tag(rid, TAG_RETRIES, str(trial.run_metadata.num_failures))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._finalize(trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._finalize(trial, "ERROR")


def _first_error_line(trial) -> str:
    try:
        text = Path(trial.error_file).read_text()
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        return (lines[-1] if lines else "")[:500]
    except OSError:
        return ""


def print_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)

