"""Budgets and the provenance lock: a study stopped by `time_budget` is marked so and `study resume`
finishes it (every trial exactly once in MLflow); resume refuses changed data unless allowed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from depmicro.core.errors import DepmicroError
from depmicro.studies import provenance
from depmicro.studies.spec import spec_from_dict
from depmicro.studies.tuner import TrialTimeStopper

N_TAXA, N_SAMPLES, TRIALS = 30, 80, 4
EPOCHS = 20  # trials re-use their workers: at 2 epochs all 4 finished inside a 4 s budget (CI, stop 11)


def _counts(path: Path, seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    X = rng.negative_binomial(2, 0.05, size=(N_SAMPLES, N_TAXA)) * (rng.random((N_SAMPLES, N_TAXA)) < 0.6)
    X[:, 0] += 1
    lines = ["sample," + ",".join(f"t{j}" for j in range(N_TAXA))]
    lines += [f"s{i}," + ",".join(str(int(v)) for v in row) for i, row in enumerate(X)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _raw(data: Path, **top) -> dict:
    return {"name": "budget", "datasets": [str(data)], "num_samples": TRIALS, "scheduler": "none", "baselines": [],
            "base_config": {"epochs": EPOCHS, "timesteps": 50, "sampling_fraction": 10, "vae_epochs": 3, "latent_dim": 2,
                            "vae_hidden": 16, "hidden_dim": 16, "n_layers": 1, "n_heads": 2, "use_metadata": False,
                            "vae_pretrain": False},
            "search_space": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-3}}, **top}


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("2h", 7200), ("1.5h", 5400), (45, 45)])
def test_durations(tmp_path, text, seconds):
    spec = spec_from_dict(_raw(_counts(tmp_path / "d.csv"), time_budget=text, max_trial_seconds=text))
    assert spec.time_budget_s == seconds == spec.max_trial_seconds


@pytest.mark.parametrize("bad", ["2 hours", "-1h", 0, "h", True])
def test_bad_duration_is_one_line(tmp_path, bad):
    with pytest.raises(DepmicroError, match="time_budget must be"):
        spec_from_dict(_raw(_counts(tmp_path / "d.csv"), time_budget=bad))


def test_trial_time_stopper():
    stop = TrialTimeStopper(10.0)
    assert not stop("t", {"time_total_s": 9.9}) and stop("t", {"time_total_s": 10.0}) and not stop.stop_all()


def test_provenance_refuses_changed_data_in_one_line(tmp_path):
    data = _counts(tmp_path / "d.csv")
    spec = spec_from_dict(_raw(data))
    state = {"provenance": provenance.record(spec, "abc")}
    assert set(state["provenance"]) >= {"data", "git_commit", "versions"}
    assert set(state["provenance"]["versions"]) == {"torch", "ray", "optuna", "mlflow"}
    assert provenance.check_resume("budget", state, spec, allow_changed=False) == {}
    _counts(data, seed=4)
    with pytest.raises(DepmicroError) as err:
        provenance.check_resume("budget", state, spec, allow_changed=False)
    assert "\n" not in str(err.value) and str(data) in str(err.value) and "--allow-changed-data" in str(err.value)
    changed = provenance.check_resume("budget", state, spec, allow_changed=True)
    assert list(changed) == [str(data)] and changed[str(data)][0] == state["provenance"]["data"][str(data)]
    assert provenance.check_resume("budget", {}, spec, allow_changed=False) == {}  # a study from before the lock


@pytest.mark.slow
@pytest.mark.cluster
def test_budget_stop_then_resume_finishes_each_trial_once(tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.conftest import Driver, study_args

    data = _counts(tmp_path / "counts.csv")
    path = tmp_path / "budget.yaml"
    path.write_text(yaml.safe_dump(_raw(data, time_budget="3s"), sort_keys=False))
    uri, storage = study_args(tmp_path)

    def cli(args: list, tag: str) -> Driver:
        drv = Driver([*args, "--tracking-uri", uri, "--storage", storage, "--json"], cwd=tmp_path, tag=tag)
        try:
            drv.wait(400)
        finally:
            drv.kill_group()
        return drv

    first = cli(["study", "run", path], "first")
    assert first.proc.returncode == 0, first.stderr()[-3000:]
    summary = first.json()
    assert summary["stopped_on"] == "time_budget" and summary["state"] == "KILLED", summary
    state_file = storage / "budget" / "depmicro_study.json"
    state = json.loads(state_file.read_text())
    assert state["stopped_on"] == "time_budget" and state["provenance"]["data"][str(data)]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("depmicro-budget")
    parent = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("depmicro.kind") == "study")
    assert parent.data.tags["depmicro.stopped_on"] == "time_budget"
    assert json.loads(parent.data.tags["depmicro.data_sha256"]) == {"counts.csv": state["provenance"]["data"][str(data)]}
    status = cli(["study", "status", "budget"], "status").json()
    assert status["stopped_on"] == "time_budget" and status["resumable"]

    _counts(data, seed=5)  # the data file changes between sessions
    runs_before = len(client.search_runs([exp.experiment_id]))
    refused = cli(["study", "resume", "budget"], "refused")
    err = refused.stderr().strip().splitlines()
    assert refused.proc.returncode == 2 and err[-1].startswith("depmicro study resume: error: study 'budget': data file")
    assert json.loads(state_file.read_text()) == state and len(client.search_runs([exp.experiment_id])) == runs_before

    # this session without a budget (each session would otherwise get the study's 3 s again)
    drv = cli(["study", "resume", "budget", "--allow-changed-data", "--time-budget", "0"], "resume")
    assert drv.proc.returncode == 0, drv.stderr()[-3000:]
    assert drv.json()["state"] == "FINISHED" and "stopped_on" not in drv.json()
    trials = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("depmicro.kind") == "trial"]
    assert len(trials) == TRIALS and len({r.data.tags["depmicro.trial_id"] for r in trials}) == TRIALS
    for r in trials:
        assert r.data.tags["depmicro.status"] == "TERMINATED" and r.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, EPOCHS + 1))  # each epoch logged once, across the stop and the resumes
        assert "test_pcc_per_microbe" in r.data.metrics
    parent = client.get_run(parent.info.run_id)
    assert parent.data.tags["depmicro.data_changed"] == "true" and parent.data.tags["depmicro.stopped_on"] == ""
    final = json.loads(state_file.read_text())
    assert final["stopped_on"] is None and final["resumes"][0]["after_stop_on"] == "time_budget"
    assert list(final["resumes"][0]["data_changed"]) == [str(data)]
