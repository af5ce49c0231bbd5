"""Resume retires MLflow runs of trials that Tune's saved state never held.

With re-used workers a new trial starts the moment one ends; a driver killed right then has created
the new trial's MLflow run but not yet saved it in Tune's experiment state. The restored search
suggests that configuration again under a new id, so the old run must not stay RUNNING or count."""
from __future__ import annotations

from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from depmicro.studies import schema, tracking
from depmicro.studies.spec import load_spec
from depmicro.studies.status import find_runs
from tests.conftest import small_study


def _trial_run(client: MlflowClient, exp_id: str, study: str, trial_id: str, status: str) -> str:
    tags = {schema.TAG_STUDY: study, schema.TAG_KIND: schema.KIND_TRIAL, schema.TAG_TRIAL_ID: trial_id,
            schema.TAG_STATUS: status}
    return client.create_run(exp_id, run_name=trial_id, tags=tags).info.run_id


def test_first_step_after_restore_retires_runs_tune_does_not_hold(tmp_path):
    spec = load_spec(small_study(tmp_path, "orphans", num_samples=2))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id, parent = tracking.start_study(spec, uri)
    client = MlflowClient(uri)
    held = _trial_run(client, exp_id, spec.name, "held_00000", "RUNNING")
    done = _trial_run(client, exp_id, spec.name, "done_00001", "TERMINATED")  # a finished run is history: kept
    orphan = _trial_run(client, exp_id, spec.name, "lost_00002", "RUNNING")

    tracker = tracking.MlflowTracker(spec, uri, exp_id, parent)
    tracker.on_step_begin(0, [SimpleNamespace(trial_id="held_00000", status="RUNNING")])

    gone = client.get_run(orphan)
    assert gone.info.lifecycle_stage == "deleted" and gone.info.status == "KILLED"
    assert gone.data.tags[schema.TAG_STATUS] == schema.ORPHANED
    assert "new trial id" in gone.data.tags[schema.TAG_ERROR]
    for rid, status in ((held, "RUNNING"), (done, "TERMINATED")):
        run = client.get_run(rid)
        assert run.info.lifecycle_stage == "active" and run.data.tags[schema.TAG_STATUS] == status
    # what status and analysis read: the orphan no longer counts
    ids = {r.data.tags[schema.TAG_TRIAL_ID] for r in find_runs(client, exp_id, spec.name, schema.KIND_TRIAL)}
    assert ids == {"held_00000", "done_00001"}

    tracker.on_step_begin(1, [])  # only the first step after a (re)start reconciles
    assert client.get_run(held).info.lifecycle_stage == "active"
