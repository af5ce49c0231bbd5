"""A study spec becomes one Ray Tune experiment: run and resume (what `study status` reads: status.py).

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
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
from ray import tune

from depmicro.cluster.connect import connect
from depmicro.core.data.baselines import impute_with_baseline
from depmicro.core.data.evaluation import evaluate, per_microbe_pcc, protocol_matrix
from depmicro.core.errors import DepmicroError
from depmicro.studies import confirm_phase, provenance, schema, tracking, tuner
from depmicro.studies import status as recorded
from depmicro.studies.prepare import prepare_data, warm_vae
from depmicro.studies.spec import StudySpec, load_spec, split_data_key
from depmicro.studies.state import (STATE_FILE, check_resumable, experiment_dir, read_state, storage_root, study_lock,
                                   write_state)
from depmicro.studies.trainable import SharedData
from depmicro.studies.warm_start import warm_points


# --- commands ---------------------------------------------------------------------------------

def _run_baselines(spec: StudySpec, shared: SharedData, tracking_uri: str, exp_id: str, parent: str, log) -> None:
    client = recorded.client_for(tracking_uri)
    for method in spec.baselines:
        for key in spec.data_keys:
            name, seed = split_data_key(key)
            done = recorded.find_runs(client, exp_id, spec.name, schema.KIND_BASELINE, method=method, dataset=name, seed=seed)
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
    tracking_uri = schema.check_tracking_uri(schema.normalize_tracking_uri(tracking_uri or schema.default_tracking_uri()))
    storage = storage_root(storage)
    points = warm_points(spec, tracking_uri) if spec.warm_start else None  # refuse before anything is created
    with study_lock(storage, spec.name):
        exp = storage / spec.name
        if tune.Tuner.can_restore(str(exp)):
            raise DepmicroError(f"study {spec.name!r} already exists in {storage}; continue it with "
                                f"`depmicro study resume {spec.name}` or give the study another name")
        client = recorded.client_for(tracking_uri)
        exp_obj = client.get_experiment_by_name(schema.experiment_name(spec.name))
        if exp_obj is not None and recorded.find_runs(client, exp_obj.experiment_id, spec.name, schema.KIND_TRIAL):
            raise DepmicroError(f"MLflow at {tracking_uri} already holds trials of study {spec.name!r}; "
                                "resume it or give the study another name")
        spec_text = Path(path).read_text()
        exp_id, parent = tracking.start_study(spec, tracking_uri, spec_text)
        if points:
            recorded.client_for(tracking_uri).log_dict(parent, {"study": spec.warm_start.study, "points": points},
                                                       schema.ARTIFACT_WARM_START)
        prov = provenance.record(spec, tracking.git_commit())
        tracking.log_provenance(tracking_uri, parent, prov)
        write_state(exp, {"spec": spec.to_dict(), "tracking_uri": tracking_uri, "experiment_id": exp_id,
                           "parent_run_id": parent, "created": time.time(), "provenance": prov,
                           "warm_start_points": points})
        return _execute(spec, exp, tracking_uri, exp_id, parent, address, log, restore=False, warm=points)


def resume_study(name: str, address: str | None = None, tracking_uri: str | None = None,
                 storage: str | os.PathLike | None = None, log=None, allow_changed_data: bool = False,
                 time_budget: float | None = None) -> dict:
    """Continue a study whose driver stopped: finished trials stay, the rest continue from checkpoints.
    Refuses a study whose data files changed since it started unless `allow_changed_data`;
    `time_budget` (seconds, 0 for none) replaces the study's per-session budget for this session."""
    log = log or tracking.print_line
    exp = experiment_dir(name, storage)
    read_state(exp)  # a damaged state is refused before the lock file is made
    with study_lock(exp.parent, name):
        state = read_state(exp)  # again: it may have changed while another driver held the lock
        changed = check_resumable(name, state, tracking_uri, allow_changed_data)
        spec = state["spec_obj"]
        uri = schema.check_tracking_uri(state["tracking_uri"])
        if not tune.Tuner.can_restore(str(exp)):
            raise DepmicroError(f"study {name!r} at {exp} has no Tune state to resume (its driver stopped before the "
                                "first trial started); run the study file again")
        exp_id, parent = tracking.start_study(spec, uri)
        resumed = {"at": time.time(), "git_commit": tracking.git_commit(), "versions": provenance.versions(),
                   "data_changed": {p: {"before": a, "now": b} for p, (a, b) in changed.items()},
                   "after_stop_on": state.get("stopped_on")}
        state.setdefault("resumes", []).append(resumed)
        state["stopped_on"] = None
        if changed and state.get("provenance"):  # the allowed data is the reference from now on (resumes.json keeps the old)
            state["provenance"]["data"] = provenance.data_hashes(spec)
        write_state(exp, state)
        tracking.log_resume(uri, parent, state["resumes"])
        budget = spec.time_budget_s
        if time_budget is not None:
            os.environ[tuner.RESUME_BUDGET_ENV] = str(float(time_budget))
            budget = time_budget or None
        if changed:
            log(f"[{name}] resuming with changed data ({len(changed)} file(s)); recorded as {schema.TAG_DATA_CHANGED}")
        return _execute(spec, exp, uri, exp_id, parent, address, log, restore=True, budget=budget)


def _execute(spec: StudySpec, exp: Path, tracking_uri: str, exp_id: str, parent: str, address: str | None,
             log, restore: bool, warm: list[dict] | None = None, budget: float | None = None) -> dict:
    """Prepare the data, start Ray, run the baselines, the trials and (if asked) the confirmation;
    MLflow and the state file record how the session ended, however it ended."""
    t0 = time.time()
    # checkpoints every epoch force experiment snapshots (what makes resume exact); do not warn about it
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    total, budget = spec.n_trials(), (budget if restore else spec.time_budget_s)
    hint = f"depmicro study resume {spec.name} --storage {exp.parent}"
    status, reason, stopped_on, confirmed = "FAILED", "", None, None
    previous_term = _sigterm_as_sigint()
    try:
        shared = _start(spec, exp, tracking_uri, exp_id, parent, address, log)
        if restore:
            study_tuner = tuner.restore_tuner(exp, shared)
        else:
            study_tuner = tuner.build_tuner(spec, shared, exp.parent, tracking.MlflowTracker(spec, tracking_uri, exp_id, parent), warm)
        log(f"[{spec.name}] {'resuming' if restore else 'running'} {total} trial(s), "
            f"{spec.max_concurrent_trials} at a time, {spec.resources.cpu:g} CPU / {spec.resources.gpu:g} GPU each"
            + (f", time budget {budget:g}s this session" if budget else ""))
        t_fit = time.time()
        with contextlib.redirect_stdout(sys.stderr):  # Tune prints tables; stdout carries only the result (--json)
            study_tuner.fit()
        fit_seconds = time.time() - t_fit
        # MLflow's status tags are the record (Tune counts a trial interrupted by Ctrl-C as ended, too)
        final_status = recorded.recorded_status(spec.name, tracking_uri)
        done = sum(v for k, v in final_status["counts"].items() if k in schema.TERMINAL)
        # Tune returns early only when stopped (SIGINT/SIGTERM): every other end runs all trials
        status = "FINISHED" if done >= total else "KILLED"
        if status == "FINISHED" and spec.confirm:
            confirmed = _confirm(spec, exp, tracking_uri, exp_id, parent, log)
            if confirmed["finished_trials"] < confirmed["expected_trials"]:
                status = "KILLED"
        if status != "FINISHED" and budget and fit_seconds >= budget:
            stopped_on = "time_budget"
    except KeyboardInterrupt:
        status = "KILLED"
        raise KeyboardInterrupt(f"resume with: {hint}") from None
    except BaseException as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:500]
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        _record_end(spec, exp, tracking_uri, exp_id, parent, status, reason, stopped_on)
    if status == "KILLED" and not stopped_on:  # interrupted; a budget stop is an ordinary end
        raise KeyboardInterrupt(f"{done} of {total} trial(s) done; resume with: {hint}")
    summary = {"name": spec.name, "state": status, "storage": str(exp), "tracking_uri": tracking_uri,
               "trials": sum(final_status["counts"].values()), "counts": final_status["counts"],
               "seconds": round(time.time() - t0, 1)}
    if stopped_on:
        summary["stopped_on"] = stopped_on
    if confirmed is not None:
        summary["confirm"] = {k: confirmed[k] for k in ("winner", "winner_config", "finished_trials", "expected_trials")}
    if status != "FINISHED":
        summary["next"] = hint
    best = _best_finished(spec, final_status["trials"])
    if best:
        summary["best"] = best
    return summary


def _start(spec: StudySpec, exp: Path, tracking_uri: str, exp_id: str, parent: str, address: str | None, log) -> SharedData:
    """The data first (a set that fails to load costs no Ray start-up), then Ray, the shared VAE
    warm-up and the baselines: everything the trials share."""
    shared = prepare_data(spec, exp.parent / ".dep_cache", log)
    cluster = connect(address)
    _sigterm_as_sigint()  # again: ray.init installs its own SIGTERM handler, which aborts the driver
    log(f"[{spec.name}] Ray: {cluster['nodes']} node(s), {cluster['cpus']:g} CPU, {cluster['gpus']:g} GPU; "
        f"MLflow: {tracking_uri}; storage: {exp}")
    _check_trials_fit(spec, cluster, local=address in (None, "", "local"), log=log)
    warm_vae(spec, shared, log)
    if spec.baselines:
        _run_baselines(spec, shared, tracking_uri, exp_id, parent, log)
    return shared


def _check_trials_fit(spec: StudySpec, cluster: dict, local: bool, log) -> None:
    """A trial that asks for more than Ray has is never scheduled, and Tune waits for it without end. On this
    machine nothing can be added, so that is refused; a cluster's autoscaler may still add the nodes."""
    need = {"CPU": spec.resources.cpu, "GPU": spec.resources.gpu}
    have = {"CPU": cluster["cpus"], "GPU": cluster["gpus"]}
    short = [k for k in need if need[k] > have[k]]
    if not short:
        return
    what = ", ".join(f"{need[k]:g} {k}" for k in short)
    there = ", ".join(f"{have[k]:g} {k}" for k in short)
    if local:
        raise DepmicroError(f"resources_per_trial asks for {what} per trial, but this machine has {there}: no trial "
                            "could start; lower resources_per_trial, or run on a cluster that has them (--address)")
    log(f"[{spec.name}] a trial asks for {what}, the cluster has {there} now: trials wait until nodes are added")


def _confirm(spec: StudySpec, exp: Path, tracking_uri: str, exp_id: str, parent: str, log) -> dict:
    """The confirmation trials; the chosen points are stored first, so a resumed study confirms the same ones."""
    state = read_state(exp)
    points = state.get("confirm_points") or confirm_phase.choose_points(spec, tracking_uri)
    state["confirm_points"] = points
    write_state(exp, state)
    confirmed = confirm_phase.run_confirmation(spec, exp.parent, tracking_uri, exp_id, parent, points, log)
    state = read_state(exp)
    state["confirm"] = confirmed
    write_state(exp, state)
    return confirmed


def _record_end(spec: StudySpec, exp: Path, tracking_uri: str, exp_id: str, parent: str, status: str, reason: str,
                stopped_on: str | None) -> None:
    """How the session ended, in MLflow (parent run status, unfinished trials, the stop reason) and the state."""
    tracking.end_study(tracking_uri, parent, status, reason=reason)
    if status != "FINISHED":
        tracking.mark_interrupted(spec.name, tracking_uri, exp_id)
    tracking.set_stopped_on(tracking_uri, parent, stopped_on)
    if stopped_on:
        state = read_state(exp)
        state["stopped_on"] = stopped_on
        write_state(exp, state)


def _sigterm_as_sigint():
    """SIGTERM (a scheduler's or `kill`'s stop) takes Ctrl-C's path: during tuner.fit Tune's own
    SIGINT handler saves the experiment and returns; before it, KeyboardInterrupt. Either way the
    study ends KILLED in MLflow with a resume hint, not with a dead driver and a RUNNING parent."""
    if threading.current_thread() is not threading.main_thread():
        return signal.getsignal(signal.SIGTERM)
    return signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))


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
