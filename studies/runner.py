"""A study spec becomes one Ray Tune experiment: run, resume, status.

Layout on disk: `<storage>/<study name>/` is the Tune experiment directory (Tune's own state,
trial directories, checkpoints) plus `depmicro_study.json` (the resolved spec with absolute paths,
the tracking URI and the MLflow ids), so `study resume NAME` needs neither the study file nor the
original working directory.

Search mapping (why each):
- optuna: OptunaSearch (seeded TPE) suggests configurations; when the study has several
  (dataset, held-out seed, replicate) combinations, ray.tune.search.Repeater runs each suggestion
  on all of them as separate trials and hands TPE their mean, so TPE optimizes a configuration's
  cross-dataset quality instead of learning which dataset is easiest.
- random / grid: Tune's variant generator, with grid_search over the data combinations and
  ablation arms, so each arm x dataset x seed x replicate is one trial.
- ASHA uses `epoch` as its time attribute, max_t = the study's epochs, and does not stop trials
  at the last rung (they are finished by then and owe their test report).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from ray import tune

from depmicro.cluster.connect import connect
from depmicro.core.data.baselines import impute_with_baseline
from depmicro.core.data.evaluation import evaluate, per_microbe_pcc, protocol_matrix
from depmicro.core.errors import DepmicroError
from depmicro.core.io.atomic import atomic_write_text
from depmicro.studies import schema, tracking, tuner
from depmicro.studies.spec import StudySpec, load_spec, spec_from_json, split_data_key
from depmicro.studies.prepare import prepare_data, warm_vae
from depmicro.studies.trainable import SharedData

STATE_FILE = "depmicro_study.json"
DEFAULT_STORAGE = "depmicro_results"


def default_storage() -> Path:
    return Path(DEFAULT_STORAGE).resolve()


def storage_root(storage: str | os.PathLike | None) -> Path:
    if storage and "://" in str(storage):
        raise DepmicroError(f"--storage {storage}: cloud URIs are not supported yet; use a directory "
                            "(on a cluster: a shared file system mounted at the same path on every node)")
    return Path(storage).resolve() if storage else default_storage()


def experiment_dir(name: str, storage: str | os.PathLike | None) -> Path:
    return storage_root(storage) / name


# --- commands ---------------------------------------------------------------------------------

def _write_state(exp: Path, state: dict) -> None:
    exp.mkdir(parents=True, exist_ok=True)
    atomic_write_text(exp / STATE_FILE, json.dumps(state, indent=2))


def _read_state(exp: Path) -> dict:
    p = exp / STATE_FILE
    if not p.is_file():
        raise DepmicroError(f"no study at {exp} (no {STATE_FILE}); check the name and --storage")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        raise DepmicroError(f"{p}: unreadable study state") from None


def _run_baselines(spec: StudySpec, shared: SharedData, tracking_uri: str, exp_id: str, parent: str, log) -> None:
    client = tracking.client_for(tracking_uri)
    for method in spec.baselines:
        for key in spec.data_keys:
            name, seed = split_data_key(key)
            done = tracking.find_runs(client, exp_id, spec.name, schema.KIND_BASELINE, method=method, dataset=name, seed=seed)
            if done and done[0].info.status == "FINISHED":
                continue
            data, split = shared.datasets[name], shared.splits[key]
            Y = protocol_matrix(data.counts, split, spec.protocol)
            filled, seconds = impute_with_baseline(method, Y, split.observed, seed=seed)
            metrics = evaluate(Y, filled, split.test)
            metrics["seconds"] = seconds
            clean = lambda a: [None if not np.isfinite(x) else float(x) for x in a]  # noqa: E731
            per = {"var_names": list(data.var_names), "test": clean(per_microbe_pcc(Y, filled, split.test)),
                   "val": clean(per_microbe_pcc(Y, filled, split.val))}
            tracking.log_baseline(spec, tracking_uri, exp_id, parent, method, name, seed,
                         {k: v for k, v in metrics.items() if k != "seconds"} | {"seconds": metrics["seconds"]}, per)
            log(f"[{spec.name}] baseline {method} on {key}: test_pcc_per_microbe={metrics['pcc_per_microbe']:.4f}")


def run_study(path: str | os.PathLike, address: str | None = None, tracking_uri: str | None = None,
              storage: str | os.PathLike | None = None, log=None) -> dict:
    """Validate the study file, start or join Ray, and run every trial (`depmicro study run`)."""
    log = log or tracking.print_line
    spec = load_spec(path)  # before anything starts: a bad file costs a second
    tracking_uri = schema.normalize_tracking_uri(tracking_uri or schema.default_tracking_uri())
    storage = storage_root(storage)
    exp = storage / spec.name
    if tune.Tuner.can_restore(str(exp)):
        raise DepmicroError(f"study {spec.name!r} already exists in {storage}; continue it with "
                            f"`depmicro study resume {spec.name}` or give the study another name")
    client = tracking.client_for(tracking_uri)
    exp_obj = client.get_experiment_by_name(schema.experiment_name(spec.name))
    if exp_obj is not None and tracking.find_runs(client, exp_obj.experiment_id, spec.name, schema.KIND_TRIAL):
        raise DepmicroError(f"MLflow at {tracking_uri} already holds trials of study {spec.name!r}; "
                            "resume it or give the study another name")
    spec_text = Path(path).read_text()
    exp_id, parent = tracking.start_study(spec, tracking_uri, spec_text)
    _write_state(exp, {"spec": spec.to_dict(), "tracking_uri": tracking_uri, "experiment_id": exp_id,
                       "parent_run_id": parent, "created": time.time()})
    return _execute(spec, exp, tracking_uri, exp_id, parent, address, log, restore=False)


def resume_study(name: str, address: str | None = None, tracking_uri: str | None = None,
                 storage: str | os.PathLike | None = None, log=None) -> dict:
    """Continue a study whose driver stopped: finished trials stay, the rest continue from checkpoints."""
    log = log or tracking.print_line
    exp = experiment_dir(name, storage)
    state = _read_state(exp)
    if tracking_uri and schema.normalize_tracking_uri(tracking_uri) != state["tracking_uri"]:
        raise DepmicroError(f"study {name!r} is tracked at {state['tracking_uri']}; resume it there (got {tracking_uri})")
    spec = spec_from_json(state["spec"])
    uri = state["tracking_uri"]
    if not tune.Tuner.can_restore(str(exp)):
        raise DepmicroError(f"study {name!r} at {exp} has no Tune state to resume (its driver stopped before the "
                            "first trial started); run the study file again")
    exp_id, parent = tracking.start_study(spec, uri)
    return _execute(spec, exp, uri, exp_id, parent, address, log, restore=True)


def _execute(spec: StudySpec, exp: Path, tracking_uri: str, exp_id: str, parent: str, address: str | None,
             log, restore: bool) -> dict:
    t0 = time.time()
    # checkpoints every epoch force experiment snapshots (what makes resume exact); do not warn about it
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    cluster = connect(address)
    log(f"[{spec.name}] Ray: {cluster['nodes']} node(s), {cluster['cpus']:g} CPU, {cluster['gpus']:g} GPU; "
        f"MLflow: {tracking_uri}; storage: {exp}")
    shared = prepare_data(spec, exp.parent / ".dep_cache", log)
    warm_vae(spec, shared, log)
    if spec.baselines:
        _run_baselines(spec, shared, tracking_uri, exp_id, parent, log)
    trainable = tuner.trainable(shared)
    total = spec.n_trials()
    status = "FAILED"
    try:
        if restore:
            study_tuner = tune.Tuner.restore(str(exp), trainable=trainable, resume_errored=True)
        else:
            tracker = tracking.MlflowTracker(spec, tracking_uri, exp_id, parent)
            study_tuner = tune.Tuner(
                trainable, param_space=tuner.param_space(spec),
                tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, search_alg=tuner.search_alg(spec),
                                            scheduler=tuner.scheduler(spec), num_samples=tuner.num_samples(spec),
                                            max_concurrent_trials=spec.max_concurrent_trials),
                run_config=tuner.run_config(spec, exp.parent, [tracker, tuner.progress_callback(spec, total)]),
            )
        log(f"[{spec.name}] {'resuming' if restore else 'running'} {total} trial(s), "
            f"{spec.max_concurrent_trials} at a time, {spec.resources.cpu:g} CPU / {spec.resources.gpu:g} GPU each")
        with contextlib.redirect_stdout(sys.stderr):  # Tune prints tables; stdout carries only the result (--json)
            study_tuner.fit()
        # MLflow's status tags are the record (Tune counts a trial interrupted by Ctrl-C as ended, too)
        final_status = tracking.study_status(spec.name, tracking_uri)
        counts = final_status["counts"]
        done = sum(v for k, v in counts.items() if k in schema.TERMINAL)
        status = "FINISHED" if done >= total else "KILLED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracking.end_study(tracking_uri, parent, status)
        if status != "FINISHED":
            tracking.mark_interrupted(spec.name, tracking_uri, exp_id)
    summary = {"name": spec.name, "state": status, "storage": str(exp), "tracking_uri": tracking_uri,
               "trials": sum(counts.values()), "counts": counts, "seconds": round(time.time() - t0, 1)}
    if status != "FINISHED":
        summary["next"] = f"depmicro study resume {spec.name} --storage {exp.parent}"
    best = _best_finished(spec, final_status["trials"])
    if best:
        summary["best"] = best
    return summary


def _best_finished(spec: StudySpec, trials: list[dict]) -> dict | None:
    """The finished trial with the best best-so-far validation score (the model that was kept and tested)."""
    key = spec.metric if spec.metric.startswith("best_") else f"best_{spec.metric}"
    fin = [t for t in trials if t["status"] == "TERMINATED" and key in t["metrics"]]
    if not fin:
        return None
    pick = (max if spec.mode == "max" else min)(fin, key=lambda t: t["metrics"][key])
    return {"trial_id": pick["trial_id"], key: pick["metrics"][key],
            "test_pcc_per_microbe": pick["metrics"].get("test_pcc_per_microbe"),
            "config": {k: pick["config"].get(k) for k in spec.search_space}, "run_id": pick["run_id"]}


def study_status(name: str, tracking_uri: str | None = None, storage: str | os.PathLike | None = None) -> dict:
    """The study from MLflow (every trial the driver saw), plus whether Tune can resume it."""
    exp = experiment_dir(name, storage)
    uri = tracking_uri
    if uri is None and (exp / STATE_FILE).is_file():
        uri = _read_state(exp)["tracking_uri"]
    uri = schema.normalize_tracking_uri(uri or schema.default_tracking_uri())
    out = tracking.study_status(name, uri)
    out["storage"] = str(exp)
    out["resumable"] = bool((exp / STATE_FILE).is_file()) and out["state"] != "FINISHED"
    if (exp / STATE_FILE).is_file():
        out["expected_trials"] = spec_from_json(_read_state(exp)["spec"]).n_trials()
    return out
