"""MLflow logging for studies, from one place: a Ray Tune callback on the driver.

Trials never talk to MLflow. SQLite (the default store) does not take concurrent writers well, and
a worker on another node may not even reach the tracking store; the driver sees every result
anyway. The layout is /work/notes/TRACKING.md's contract (analysis reads it).

Idempotence across `study resume`: the parent run is found again by its `depmicro.study` tag and
each trial's run by `depmicro.trial_id`, never created twice; per-epoch metrics are logged only for
epochs above the highest one already in MLflow, so a trial that re-reports an epoch after a
restore does not duplicate points; final metrics and artifacts are written when the run's status
tag is not yet terminal. The first loop step after a restore reconciles runs the killed driver
left RUNNING for trials Tune already counts as finished.
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

from ray.tune import Callback

from depmicro.core.errors import DepmicroError
from depmicro.studies.spec import StudySpec
from depmicro.studies.trainable import EPOCH_KEYS, FINAL_FILE, resolve_trial

MAX_PARAM_CHARS = 6000
FINAL_KEYS = ("test_pcc", "test_cos", "test_rmse", "test_mae", "test_pcc_per_microbe", "test_n_microbes",
              "test_n_heldout", "best_val_pcc_per_microbe", "seconds", "vae_seconds", "vae_cached")
TERMINAL = ("TERMINATED", "ERROR", "STOPPED")


def default_tracking_uri(cwd: str | os.PathLike | None = None) -> str:
    return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / 'mlflow.db'}"


def normalize_tracking_uri(uri: str) -> str:
    """A relative SQLite path is made absolute: `study resume` may run from another directory."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def experiment_name(study: str) -> str:
    return f"depmicro-{study}"


def git_commit() -> str:
    """Best effort: the checkout the package runs from, else "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def client_for(tracking_uri: str):
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # schema set-up chatter is not progress
    return MlflowClient(tracking_uri=tracking_uri)


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """SQLite stores keep artifacts next to the database (./mlartifacts for the default)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.resolve().parent / "mlartifacts" / experiment).as_uri()
    return None


def ensure_experiment(client, study: str, tracking_uri: str) -> str:
    name = experiment_name(study)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise DepmicroError(f"MLflow experiment {name!r} is deleted; restore it or use another study name")
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_location(tracking_uri, name))


def _q(v: str) -> str:
    return v.replace("'", "\\'")


def find_runs(client, experiment_id: str, study: str, kind: str, **tags: str) -> list:
    flt = f"tags.`depmicro.study` = '{_q(study)}' and tags.`depmicro.kind` = '{kind}'"
    for k, v in tags.items():
        flt += f" and tags.`depmicro.{k}` = '{_q(str(v))}'"
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=flt, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


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
    found = find_runs(client, exp_id, spec.name, "study")
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return exp_id, run_id
    run = client.create_run(exp_id, run_name=spec.name, tags={
        "depmicro.study": spec.name, "depmicro.kind": "study", "depmicro.git_commit": git_commit()})
    _log_params(client, run.info.run_id, flatten(spec.to_dict()))
    import yaml

    client.log_text(run.info.run_id, spec_text if spec_text is not None else yaml.safe_dump(spec.to_dict(), sort_keys=False), "study.yaml")
    return exp_id, run.info.run_id


def end_study(tracking_uri: str, parent_run_id: str, status: str = "FINISHED") -> None:
    client_for(tracking_uri).set_terminated(parent_run_id, status)


def mark_interrupted(study: str, tracking_uri: str, experiment_id: str) -> None:
    """Runs of trials the driver stopped (Ctrl-C, an error) show as KILLED in MLflow until resumed;
    their `depmicro.status` tag stays RUNNING: the trial is not over, `study resume` continues it."""
    client = client_for(tracking_uri)
    for run in find_runs(client, experiment_id, study, "trial"):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")


def log_baseline(spec: StudySpec, tracking_uri: str, experiment_id: str, parent_run_id: str, method: str,
                 dataset: str, seed: int, metrics: dict, per_microbe: dict) -> str:
    """One baseline child run per (method, dataset, seed); a finished one is not logged again."""
    client = client_for(tracking_uri)
    found = find_runs(client, experiment_id, spec.name, "baseline", method=method, dataset=dataset, seed=seed)
    if found and found[0].info.status == "FINISHED":
        return found[0].info.run_id
    if found:
        run_id = found[0].info.run_id
    else:
        run_id = client.create_run(experiment_id, run_name=f"{method}-{dataset}-s{seed}", tags={
            "mlflow.parentRunId": parent_run_id, "depmicro.study": spec.name, "depmicro.kind": "baseline",
            "depmicro.method": method, "depmicro.dataset": dataset, "depmicro.seed": str(seed),
            "depmicro.git_commit": git_commit()}).info.run_id
    _log_metrics(client, run_id, {f"test_{k}": v for k, v in metrics.items()})
    client.log_dict(run_id, per_microbe, "per_microbe_pcc.json")
    client.set_terminated(run_id, "FINISHED")
    return run_id


class MlflowTracker(Callback):
    """Driver-side Tune callback writing one MLflow child run per trial (see the module docstring)."""

    def __init__(self, spec: StudySpec, tracking_uri: str, experiment_id: str, parent_run_id: str, commit: str | None = None):
        self.spec = spec
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.commit = commit or git_commit()
        self._reset()

    def _reset(self) -> None:
        self._client = None
        self._runs: dict[str, str] = {}        # trial id -> run id
        self._max_step: dict[str, int] = {}    # run id -> highest epoch logged
        self._status: dict[str, str] = {}      # run id -> depmicro.status
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
        found = find_runs(self.client, self.experiment_id, self.spec.name, "trial", trial_id=tid)
        if found:
            run = found[0]
            rid = run.info.run_id
            hist = self.client.get_metric_history(rid, "train_loss")
            self._max_step[rid] = max((m.step for m in hist), default=0)
            self._status[rid] = run.data.tags.get("depmicro.status", "RUNNING")
        else:
            setup = resolve_trial(self.spec, trial.config)
            tags = {
                "mlflow.parentRunId": self.parent_run_id, "depmicro.study": self.spec.name, "depmicro.kind": "trial",
                "depmicro.trial_id": tid, "depmicro.dataset": setup.dataset, "depmicro.seed": str(setup.seed),
                "depmicro.variant": setup.arm, "depmicro.status": "RUNNING", "depmicro.git_commit": self.commit,
                "depmicro.replicate": str(setup.replicate),
            }
            rid = self.client.create_run(self.experiment_id, run_name=f"{setup.dataset}-s{setup.seed}-{tid}", tags=tags).info.run_id
            _log_params(self.client, rid, {k: str(v)[:MAX_PARAM_CHARS] for k, v in setup.config.items()})
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
        final = {k: result[k] for k in FINAL_KEYS if k in result}
        if status == "STOPPED":
            final = {k: v for k, v in final.items() if not k.startswith("test_")}
            final.setdefault("seconds", result.get("time_total_s", float("nan")))
        _log_metrics(self.client, rid, final)
        setup = resolve_trial(self.spec, trial.config)
        self.client.log_dict(rid, setup.config, "config.json")
        if status == "TERMINATED" and trial.checkpoint is not None:
            self._log_final_artifacts(rid, trial.checkpoint)
        if status == "ERROR" and getattr(trial, "error_file", None):
            self.client.set_tag(rid, "depmicro.error", _first_error_line(trial))
        if isinstance(result.get("epoch"), int):
            self.client.set_tag(rid, "depmicro.epochs_done", str(result["epoch"]))
        self.client.set_terminated(rid, "FAILED" if status == "ERROR" else "FINISHED")
        self.client.set_tag(rid, "depmicro.status", status)  # last: the tag marks a run as complete
        self._status[rid] = status

    def _log_final_artifacts(self, rid: str, checkpoint) -> None:
        with checkpoint.as_directory() as d:
            d = Path(d)
            if not (d / FINAL_FILE).is_file():
                return
            if (d / "best_model").is_dir():
                self.client.log_artifacts(rid, str(d / "best_model"), "model")
            if (d / "per_microbe_pcc.json").is_file():
                self.client.log_artifact(rid, str(d / "per_microbe_pcc.json"))

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
        for t in trials:
            if t.status in ("TERMINATED", "ERROR"):
                self._finalize(t, t.status)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        rid = self.run_id(trial)
        if self._status.get(rid) in ("TERMINATED", "STOPPED"):
            return
        if self._status.get(rid) != "RUNNING":  # new, or ERROR and resumed by `study resume` (resume_errored)
            self.client.set_tag(rid, "depmicro.status", "RUNNING")
            self._status[rid] = "RUNNING"
        self.client.update_run(rid, status="RUNNING")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        rid = self.run_id(trial)
        self._log_epoch(rid, result)
        node = result.get("node_id")
        if node and f"{rid}:{node}" not in self._tagged_node:  # a retried trial may land on another node
            self.client.set_tag(rid, "depmicro.node_id", node)
            self.client.set_tag(rid, "depmicro.node_ip", str(result.get("node_ip", "")))
            self._tagged_node.add(f"{rid}:{node}")

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        rid = self.run_id(trial)
        self.client.set_tag(rid, "depmicro.retries", str(trial.run_metadata.num_failures))

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


def study_status(study: str, tracking_uri: str) -> dict:
    """The study as MLflow records it: parent run state, every trial run, baselines."""
    from depmicro.core.model.config import config_from_dict, config_to_dict

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        raise DepmicroError(f"no study {study!r}: no MLflow database at {tracking_uri} (run it, or pass --tracking-uri)")
    client = client_for(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name(study))
    if exp is None:
        raise DepmicroError(f"no study {study!r} in {tracking_uri} (no MLflow experiment {experiment_name(study)!r})")
    parents = find_runs(client, exp.experiment_id, study, "study")
    trials = []
    for run in find_runs(client, exp.experiment_id, study, "trial"):
        tags = run.data.tags
        try:
            config = config_to_dict(config_from_dict(dict(run.data.params)))
        except DepmicroError:
            config = dict(run.data.params)
        trials.append({
            "trial_id": tags.get("depmicro.trial_id"), "status": tags.get("depmicro.status", "UNKNOWN"),
            "dataset": tags.get("depmicro.dataset"), "seed": _int_or_none(tags.get("depmicro.seed")),
            "variant": tags.get("depmicro.variant"), "node_id": tags.get("depmicro.node_id"),
            "epochs_done": _int_or_none(tags.get("depmicro.epochs_done")),
            "run_id": run.info.run_id, "config": config, "metrics": dict(run.data.metrics),
        })
    trials.sort(key=lambda t: t["trial_id"] or "")
    baselines = [{"method": r.data.tags.get("depmicro.method"), "dataset": r.data.tags.get("depmicro.dataset"),
                  "seed": _int_or_none(r.data.tags.get("depmicro.seed")), "metrics": dict(r.data.metrics)}
                 for r in find_runs(client, exp.experiment_id, study, "baseline")]
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    return {
        "name": study, "tracking_uri": tracking_uri, "experiment_id": exp.experiment_id,
        "state": parents[0].info.status if parents else "UNKNOWN", "counts": counts,
        "trials": trials, "baselines": baselines,
    }


def _int_or_none(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def print_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)

