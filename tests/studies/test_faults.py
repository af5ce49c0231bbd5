"""Fault tolerance with real processes: a SIGKILLed driver resumed with `study resume`, and a
SIGKILLed trial worker retried by Tune from its last checkpoint."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import Driver, small_study, study_args

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _results(storage: Path, name: str) -> dict[str, list[dict]]:
    """trial id -> every result line Tune wrote for it (result.json is appended across restarts)."""
    out = {}
    for f in (storage / name).glob("*/result.json"):
        lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if lines:
            out[lines[0]["trial_id"]] = lines
    return out


def _trial_runs(uri: str, name: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[f"depmicro-{name}"], filter_string=f"tags.`depmicro.study` = '{name}'")
    return runs, runs[runs["tags.depmicro.kind"] == "trial"]


def _orphans(uri: str, name: str) -> set[str]:
    import mlflow
    from mlflow.entities import ViewType

    mlflow.set_tracking_uri(uri)
    gone = mlflow.search_runs(experiment_names=[f"depmicro-{name}"], run_view_type=ViewType.DELETED_ONLY,
                              filter_string=f"tags.`depmicro.status` = 'ORPHANED'")
    return set(gone["tags.depmicro.trial_id"]) if len(gone) else set()


def _steps(uri: str, run_id: str, key: str = "train_loss") -> list[int]:
    from mlflow.tracking import MlflowClient

    return [m.step for m in MlflowClient(uri).get_metric_history(run_id, key)]


def test_killed_driver_resumes_every_trial_exactly_once(tmp_path):
    name = "killed"
    # two Optuna suggestions x two held-out seeds (Repeater): resume must restore the searcher's pairing too
    spec = small_study(tmp_path, name, epochs=3, num_samples=2, seeds=[0, 1], scheduler="none", baselines=[])
    uri, storage = study_args(tmp_path)
    first = Driver(["study", "run", spec, "--tracking-uri", uri, "--storage", storage], cwd=tmp_path, tag="first")
    second = None
    try:
        first.wait_for(" finished (", timeout=240)  # one trial has finished, others are mid-way or pending
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(30)
        first.kill_group()  # the Ray processes the killed driver leaves behind
        before = _results(storage, name)
        assert 1 <= len(before) <= 4

        second = Driver(["study", "resume", name, "--storage", storage, "--json"], cwd=tmp_path, tag="second")
        assert second.wait(240) == 0, second.stderr()[-3000:]
        summary = second.json()
        assert summary["counts"] == {"TERMINATED": 4}
    finally:
        first.kill_group()
        if second is not None:
            second.kill_group()

    runs, trials = _trial_runs(uri, name)
    assert (runs["tags.depmicro.kind"] == "study").sum() == 1
    assert len(trials) == 4 and trials["tags.depmicro.trial_id"].nunique() == 4
    # each suggested configuration ran once on each held-out seed
    pairs = trials.groupby("params.lr")["tags.depmicro.seed"].apply(sorted).tolist()
    assert pairs == [["0", "1"], ["0", "1"]], pairs
    assert (trials["tags.depmicro.status"] == "TERMINATED").all() and (trials["status"] == "FINISHED").all()
    for _, run in trials.iterrows():
        assert _steps(uri, run["run_id"]) == [1, 2, 3]
        assert _steps(uri, run["run_id"], "val_pcc_per_microbe") == [1, 2, 3]
        assert run["metrics.test_pcc_per_microbe"] == run["metrics.test_pcc_per_microbe"]  # not NaN
    after = _results(storage, name)
    # a trial that started just before the kill, before Tune saved it, is re-run under a new id; its
    # run is retired (ORPHANED, soft-deleted) and whatever Tune wrote for it is not a trial of the study
    orphans = _orphans(uri, name)
    assert set(after) - orphans == set(trials["tags.depmicro.trial_id"])
    for tid, lines in after.items():
        assert lines[-1]["epoch"] == 3 and "test_pcc" in lines[-1]
        trained = [ln["epoch"] for ln in lines if ln["pid"] != lines[0]["pid"]]
        if tid in before and "test_pcc" in before[tid][-1]:
            # finished before the kill: never trained again (at most its final report repeated from its checkpoint)
            assert trained in ([], [3])


def test_killed_worker_retries_from_its_checkpoint(tmp_path):
    name = "workerkill"
    # 1000 samples make an epoch take ~1 s, long enough to kill the worker between two epochs
    spec = small_study(tmp_path, name, epochs=5, num_samples=1, scheduler="none", baselines=[], max_failures=2,
                       max_concurrent_trials=1, synthetic={"n_samples": 1000})
    uri, storage = study_args(tmp_path)
    drv = Driver(["study", "run", spec, "--tracking-uri", uri, "--storage", storage, "--json"], cwd=tmp_path)
    try:
        killed = None
        t0 = time.time()
        while time.time() - t0 < 240 and killed is None:
            for lines in _results(storage, name).values():
                if lines[-1].get("epoch", 0) >= 2 and "test_pcc" not in lines[-1]:
                    killed = (lines[-1]["pid"], lines[-1]["epoch"])
                    os.kill(killed[0], signal.SIGKILL)
                    break
            assert drv.proc.poll() is None, drv.stderr()[-3000:]
            time.sleep(0.1)
        assert killed is not None, "no epoch-2 result to kill the worker after"
        assert drv.wait(240) == 0, drv.stderr()[-3000:]
    finally:
        drv.kill_group()

    (lines,) = _results(storage, name).values()
    old = [ln["epoch"] for ln in lines if ln["pid"] == killed[0]]
    new = [ln["epoch"] for ln in lines if ln["pid"] != killed[0]]
    assert old[0] == 1 and max(old) >= killed[1]
    assert new and new[0] == max(old) + 1, (old, new)  # continued after its last checkpoint, not from epoch 1
    assert new[-1] == 5 and "test_pcc" in lines[-1]
    assert "retrying from its last checkpoint" in drv.stderr()
    _, trials = _trial_runs(uri, name)
    assert len(trials) == 1
    run = trials.iloc[0]
    assert run["tags.depmicro.status"] == "TERMINATED" and run["tags.depmicro.retries"] == "1"
    assert _steps(uri, run["run_id"]) == [1, 2, 3, 4, 5]
