"""The fault paths of issue 11, with real processes, asserting what MLflow and the study state say
afterwards: a driver failing before its first trial, SIGTERM of the driver, a corrupt trial checkpoint,
and one running study that meets a second driver of itself, `analyze` reading the SQLite store it writes,
and Ctrl-C (one scenario: each driver start costs tens of seconds of Ray and imports)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Driver, small_study, study_args
from tests.mlflow_study import STUDY

RUN_CLI = "import sys; from depmicro.core.cli import main; sys.exit(main())"


def cli(args: list, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN_CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def parent_run(uri: str, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"depmicro-{name}")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`depmicro.kind` = 'study'")
    return runs, client.search_runs([exp.experiment_id], filter_string="tags.`depmicro.kind` = 'trial'")


def test_driver_failing_before_its_first_trial_ends_failed_and_can_run_again(tmp_path):
    """A data set whose header reads but whose cells do not: the driver fails while loading it
    (before Ray starts). The parent run is FAILED with the reason, status says so, resume points
    back to `study run`, and `study run` starts again (and fails again for the same reason)."""
    data = tmp_path / "broken.csv"
    data.write_text("id,a,b,c\n" + "".join(f"s{i},1,2,{'x' if i == 7 else 3}\n" for i in range(20)))
    spec = small_study(tmp_path, "early", epochs=2, num_samples=1)
    import yaml

    raw = yaml.safe_load(spec.read_text())
    raw["datasets"] = [str(data)]
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    uri, storage = study_args(tmp_path)
    args = ["study", "run", spec, "--tracking-uri", uri, "--storage", storage]

    first = cli(args, tmp_path)
    assert first.returncode == 2, first.stderr[-2000:]
    assert first.stderr.strip().splitlines()[-1].startswith("depmicro study run: error: ")
    assert "non-numeric cell 'x'" in first.stderr and "Traceback" not in first.stderr
    parents, trials = parent_run(uri, "early")
    assert len(parents) == 1 and parents[0].info.status == "FAILED" and not trials
    assert "non-numeric cell 'x'" in parents[0].data.tags["depmicro.error"]

    status = cli(["study", "status", "early", "--storage", storage, "--json"], tmp_path)
    assert status.returncode == 0, status.stderr
    st = json.loads(status.stdout)
    assert st["state"] == "FAILED" and "non-numeric" in st["error"] and st["trials"] == []
    text = cli(["study", "status", "early", "--storage", storage], tmp_path).stdout
    assert "FAILED" in text and "driver failed: " in text

    resume = cli(["study", "resume", "early", "--storage", storage], tmp_path)
    assert resume.returncode == 2 and "run the study file again" in resume.stderr

    second = cli(args, tmp_path)
    assert second.returncode == 2 and "non-numeric cell 'x'" in second.stderr  # started again, not "already exists"
    parents, _ = parent_run(uri, "early")
    assert len(parents) == 1 and parents[0].info.status == "FAILED"  # the same parent run, reused


def test_trials_that_this_machine_cannot_hold_are_refused_not_waited_for(tmp_path, monkeypatch):
    """resources_per_trial beyond the private Ray's: Tune would wait for the trial without end (found by trying a GPU
    study on a CPU machine). Refused in one line once Ray has said what it has, and the parent run is FAILED with
    it; on a cluster, whose autoscaler may add nodes, the shortfall is logged instead. Ray's answer is stubbed here
    (a machine with 2 CPUs and no GPU), so the test costs no Ray start."""
    from depmicro.core.errors import DepmicroError
    from depmicro.studies import runner
    from depmicro.studies.spec import load_spec

    spec = small_study(tmp_path, "toobig", epochs=1, num_samples=1, resources_per_trial={"cpu": 1, "gpu": 1})
    monkeypatch.setattr(runner, "connect", lambda address=None: {"address": "stub", "nodes": 1, "cpus": 2.0, "gpus": 0.0})
    uri, storage = study_args(tmp_path)
    with pytest.raises(DepmicroError) as refused:
        runner.run_study(spec, tracking_uri=uri, storage=storage, log=lambda line: None)
    assert str(refused.value) == ("resources_per_trial asks for 1 GPU per trial, but this machine has 0 GPU: no trial "
                                  "could start; lower resources_per_trial, or run on a cluster that has them (--address)")
    parents, trials = parent_run(uri, "toobig")
    assert parents[0].info.status == "FAILED" and not trials
    assert "1 GPU per trial" in parents[0].data.tags["depmicro.error"]
    logged: list[str] = []
    runner._check_trials_fit(load_spec(spec), {"cpus": 2.0, "gpus": 0.0}, local=False, log=logged.append)
    assert logged == ["[toobig] a trial asks for 1 GPU, the cluster has 0 GPU now: trials wait until nodes are added"]
    runner._check_trials_fit(load_spec(spec), {"cpus": 2.0, "gpus": 1.0}, local=True, log=logged.append)  # it fits
    assert len(logged) == 1


def _assert_interrupted(drv: Driver, code: int, uri: str, name: str, storage: Path, n_trials: int) -> None:
    """What an interrupted driver leaves: exit 130, a resume hint, the parent and trial runs KILLED in MLflow
    (the trials' own status still RUNNING: resume continues them), and `study status` saying it is resumable."""
    err = drv.stderr()
    assert code == 130, err[-3000:]
    assert drv.stdout() == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("depmicro study run: interrupted") and f"depmicro study resume {name} --storage {storage}" in last
    parents, trials = parent_run(uri, name)
    assert parents[0].info.status == "KILLED" and "depmicro.error" not in parents[0].data.tags
    assert len(trials) == n_trials and all(t.info.status == "KILLED" for t in trials)
    assert all(t.data.tags["depmicro.status"] == "RUNNING" for t in trials)
    st = json.loads(cli(["study", "status", name, "--storage", storage, "--json"], drv.cwd).stdout)
    assert st["state"] == "KILLED" and st["resumable"] is True


@pytest.mark.slow
@pytest.mark.cluster
def test_sigterm_stops_the_driver_as_ctrl_c_does(tmp_path):
    """A scheduler's SIGTERM to the driver only (Ctrl-C, SIGINT, is the end of the running-study test below)."""
    name = "stop15"
    spec = small_study(tmp_path, name, epochs=8, num_samples=1, scheduler="none", baselines=[],
                       synthetic={"n_samples": 600})
    uri, storage = study_args(tmp_path)
    drv = Driver(["study", "run", spec, "--tracking-uri", uri, "--storage", storage, "--json"], cwd=tmp_path)
    try:
        drv.wait_for(" epoch 2 ", timeout=180)
        os.kill(drv.proc.pid, signal.SIGTERM)
        code = drv.wait(120)
    finally:
        drv.kill_group()
    _assert_interrupted(drv, code, uri, name, storage, n_trials=1)


def _results(storage: Path, name: str) -> list[dict]:
    (f,) = list((storage / name).glob("*/result.json")) or [None]
    if f is None:
        return []
    return [json.loads(x) for x in f.read_text().splitlines() if x.strip()]


@pytest.mark.slow
@pytest.mark.cluster
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    """Freeze the worker after it reported epoch >= 2, corrupt its newest checkpoint, kill it: Tune
    retries from that checkpoint, the trial notices, resumes from the one before and says so."""
    name = "corrupt"
    spec = small_study(tmp_path, name, epochs=5, num_samples=1, scheduler="none", baselines=[], max_failures=2,
                       synthetic={"n_samples": 1000})
    uri, storage = study_args(tmp_path)
    drv = Driver(["study", "run", spec, "--tracking-uri", uri, "--storage", storage, "--json"], cwd=tmp_path)
    try:
        t0 = time.time()
        killed = None
        while time.time() - t0 < 240 and killed is None:
            lines = _results(storage, name)
            if lines and lines[-1].get("epoch", 0) >= 2 and "test_pcc" not in lines[-1]:
                pid = lines[-1]["pid"]
                os.kill(pid, signal.SIGSTOP)
                time.sleep(1.0)  # the driver registers the checkpoint of the last report
                ckpts = sorted((storage / name).glob("*/checkpoint_*"))
                newest = ckpts[-1]
                weights = newest / "state" / "model.safetensors"
                raw = bytearray(weights.read_bytes())
                raw[len(raw) // 2] ^= 0xFF
                weights.write_bytes(bytes(raw))
                os.kill(pid, signal.SIGKILL)
                killed = (pid, newest.name, len(ckpts))
            assert drv.proc.poll() is None, drv.stderr()[-3000:]
            time.sleep(0.1)
        assert killed is not None and killed[2] >= 2, "no two checkpoints to fall back between"
        assert drv.wait(240) == 0, drv.stderr()[-3000:]
    finally:
        drv.kill_group()
    _, trials = parent_run(uri, name)
    (run,) = trials
    note = run.data.tags.get("depmicro.checkpoint_fallback", "")
    assert killed[1] in note and "does not match its SHA-256" in note and "resumed from checkpoint_" in note, note
    assert run.data.tags["depmicro.status"] == "TERMINATED" and run.info.status == "FINISHED"
    lines = _results(storage, name)
    new = [ln["epoch"] for ln in lines if ln["pid"] != killed[0]]
    old = [ln["epoch"] for ln in lines if ln["pid"] == killed[0]]
    assert new[0] == max(old), (old, new)  # the corrupt newest epoch is trained again, from the one before
    assert new[-1] == 5 and "test_pcc" in lines[-1]


@pytest.mark.slow
@pytest.mark.cluster
def test_a_running_study_refuses_a_second_driver_serves_analyze_and_stops_on_ctrl_c(tmp_path):
    """One study, running into a SQLite store that also holds the hand-logged study, meets three things in turn:
    a second driver of it (`study run` and `study resume`), refused in one line without touching its state;
    `analyze` of the other study, twice, logging report.html to that study's parent run (WAL: readers and the
    writer never lock each other out); Ctrl-C, after which it is KILLED in MLflow and resumable. The study has
    more epochs than the test waits for, so all of it happens while it runs."""
    from mlflow.tracking import MlflowClient

    from tests.mlflow_study import log_study

    root = tmp_path / "store"
    uri = log_study(root)["tracking_uri"]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"depmicro-{STUDY}")
    name, storage = "busy", tmp_path / "res"
    spec = small_study(tmp_path, name, epochs=500, num_samples=2, scheduler="none", baselines=["mean"],
                       max_concurrent_trials=2)
    drv = Driver(["study", "run", spec, "--tracking-uri", uri, "--storage", storage, "--json"], cwd=tmp_path)
    try:
        drv.wait_for(" epoch 1 ", timeout=180)
        state_before = (storage / name / "depmicro_study.json").read_text()
        second = cli(["study", "run", spec, "--tracking-uri", uri, "--storage", storage], tmp_path, timeout=60)
        assert second.returncode == 2, second.stderr[-2000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "is already being run by driver pid" in lines[0] and str(drv.proc.pid) in lines[0]
        resume = cli(["study", "resume", name, "--storage", storage], tmp_path, timeout=60)
        assert resume.returncode == 2 and "already being run" in resume.stderr
        assert (storage / name / "depmicro_study.json").read_text() == state_before
        for i in range(2):
            a = cli(["analyze", STUDY, "--tracking-uri", uri, "--out", tmp_path / f"review{i}", "--json"], tmp_path)
            assert a.returncode == 0, a.stderr[-3000:]
            assert "database is locked" not in a.stderr
            assert json.loads(a.stdout)["logged_to_parent"] is True
        assert drv.proc.poll() is None, "the study ended before the test did"
        os.kill(drv.proc.pid, signal.SIGINT)
        code = drv.wait(120)
    finally:
        drv.kill_group()
    assert "database is locked" not in drv.stderr()
    _assert_interrupted(drv, code, uri, name, storage, n_trials=2)
    parents, _ = parent_run(uri, name)
    assert len(parents) == 1  # the refused driver made no parent run of its own
    import sqlite3

    assert sqlite3.connect(root / "mlflow.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    parent = client.search_runs([exp.experiment_id], filter_string="tags.`depmicro.kind` = 'study'")[0]
    logged = [f.path for f in client.list_artifacts(parent.info.run_id, "analysis")]
    assert logged == ["analysis/report.html"]


@pytest.fixture(scope="module")
def trial_checkpoints(tmp_path_factory) -> Path:
    """Two real epoch checkpoints of a tiny fit, laid out as Tune keeps them in a trial directory."""
    import dataclasses

    from depmicro.core.data import load_dataset
    from depmicro.core.data.evaluation import make_split
    from depmicro.core.train import fit
    from tests.mlflow_study import counts_table, tiny_config

    root = tmp_path_factory.mktemp("trial")
    ds = load_dataset(counts_table(root / "counts.csv"))
    cfg = dataclasses.replace(tiny_config(0, 0.9), vae_epochs=2, epochs=2, dep_mask_mode="off")
    trial = root / "train_fn_00000"

    def hook(rep):
        d = trial / f"checkpoint_{rep.epoch - 1:06d}"
        rep.save_checkpoint(d / "state")
        (d / "trial.json").write_text(json.dumps({"elapsed": float(rep.epoch), "best": {}}))

    fit(cfg, ds, make_split(ds.normalized, seed=0), on_epoch=hook)
    return trial


class _Ckpt:
    """What tune.get_checkpoint() returns, for a local path."""

    def __init__(self, path: Path):
        self.path = str(path)

    def to_directory(self, d: str) -> None:
        shutil.copytree(self.path, d, dirs_exist_ok=True)


def _flip(p: Path) -> None:
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    p.write_bytes(bytes(raw))


def test_restore_point_takes_the_newest_whole_checkpoint(trial_checkpoints, tmp_path):
    from depmicro.studies.checkpoints import restore_point

    trial = tmp_path / "t"
    shutil.copytree(trial_checkpoints, trial)
    latest = trial / "checkpoint_000001"
    d, note = restore_point(_Ckpt(latest))
    assert note is None and json.loads((Path(d) / "trial.json").read_text())["elapsed"] == 2.0
    shutil.rmtree(d)

    _flip(latest / "state" / "model.safetensors")
    d, note = restore_point(_Ckpt(latest))
    assert json.loads((Path(d) / "trial.json").read_text())["elapsed"] == 1.0  # the epoch-1 checkpoint
    assert note.startswith("checkpoint_000001 corrupt (state: model.safetensors does not match its SHA-256")
    assert note.endswith("resumed from checkpoint_000000")
    shutil.rmtree(d)

    (trial / "checkpoint_000000" / "trial.json").write_text("{trunc")
    d, note = restore_point(_Ckpt(latest))
    assert d is None and "checkpoint_000000 corrupt (unreadable" in note and note.endswith("restarted from epoch 1")


def test_shorter_checkpoint_file_is_caught_too(trial_checkpoints, tmp_path):
    from depmicro.studies.checkpoints import checkpoint_problem

    trial = tmp_path / "t"
    shutil.copytree(trial_checkpoints, trial)
    ck = trial / "checkpoint_000001"
    assert checkpoint_problem(ck) is None
    pt = ck / "state" / "train_state.pt"
    pt.write_bytes(pt.read_bytes()[:100])
    assert "train_state.pt does not match its SHA-256" in checkpoint_problem(ck)
    (ck / "state" / "manifest.json").unlink()
    assert "no manifest.json" in checkpoint_problem(ck)
