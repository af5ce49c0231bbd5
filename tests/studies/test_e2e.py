"""The quickstart study end to end (the README's main job), read back through the CLI and MLflow."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from depmicro.core.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

EPOCH_KEYS = ("val_pcc", "val_cos", "val_rmse", "val_mae", "val_pcc_per_microbe", "train_loss", "epoch_seconds")
FINAL_KEYS = ("test_pcc", "test_cos", "test_rmse", "test_mae", "test_pcc_per_microbe", "test_n_microbes", "test_n_heldout",
              "best_val_pcc_per_microbe", "seconds")


def _runs(name: str, uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[f"depmicro-{name}"], filter_string=f"tags.`depmicro.study` = '{name}'")


def test_status_shows_every_trial(quickstart_run, capsys):
    r = quickstart_run
    assert r["summary"]["trials"] == 3 and sum(r["summary"]["counts"].values()) == 3
    code = main(["study", "status", r["name"], "--tracking-uri", r["uri"], "--storage", str(r["storage"]), "--json"])
    st = json.loads(capsys.readouterr().out)
    assert code == 0 and st["name"] == "quickstart" and st["state"] == "FINISHED"
    assert len(st["trials"]) == 3 == st["expected_trials"]
    assert len({t["trial_id"] for t in st["trials"]}) == 3
    for t in st["trials"]:
        assert set(t) >= {"trial_id", "status", "config", "metrics"}
        assert t["status"] in ("TERMINATED", "STOPPED")
        assert t["config"]["epochs"] == 3 and t["config"]["hidden_dim"] == 64  # the full ModelConfig (tiny.yaml), typed
        assert 0.7 <= t["config"]["ar_decay"] <= 1.0
        assert "val_pcc_per_microbe" in t["metrics"]
        if t["status"] == "TERMINATED":
            assert set(FINAL_KEYS) <= set(t["metrics"])
            assert t["metrics"]["vae_cached"] == 1 and t["metrics"]["vae_seconds"] == 0  # the driver trained the VAE once
    assert any(t["status"] == "TERMINATED" for t in st["trials"])
    # the human table lists each trial id on its own line
    main(["study", "status", r["name"], "--tracking-uri", r["uri"], "--storage", str(r["storage"])])
    table = capsys.readouterr().out
    assert all(sum(t["trial_id"] in line for line in table.splitlines()) == 1 for t in st["trials"])


def test_mlflow_holds_parent_and_one_child_per_trial(quickstart_run):
    from mlflow.tracking import MlflowClient

    r = quickstart_run
    runs = _runs(r["name"], r["uri"])
    kinds = runs["tags.depmicro.kind"].value_counts().to_dict()
    assert kinds == {"study": 1, "trial": 3, "baseline": 2}
    parent = runs[runs["tags.depmicro.kind"] == "study"].iloc[0]
    assert parent["tags.mlflow.runName"] == "quickstart" and parent["status"] == "FINISHED"
    assert parent["params.num_samples"] == "3"
    trials = runs[runs["tags.depmicro.kind"] == "trial"]
    assert trials["tags.depmicro.trial_id"].nunique() == 3
    assert (trials["tags.mlflow.parentRunId"] == parent["run_id"]).all()
    assert (trials["tags.depmicro.dataset"] == "synthetic").all() and (trials["tags.depmicro.seed"] == "0").all()
    assert (trials["tags.depmicro.variant"] == "search").all()
    assert trials["tags.depmicro.git_commit"].str.len().min() >= 7
    client = MlflowClient(r["uri"])
    for _, run in trials.iterrows():
        status = run["tags.depmicro.status"]
        for key in EPOCH_KEYS:
            steps = [m.step for m in client.get_metric_history(run["run_id"], key)]
            assert steps == sorted(set(steps)) and steps[0] == 1, (key, steps)  # one point per epoch
            if status == "TERMINATED":
                assert steps == [1, 2, 3]
        assert run["params.epochs"] == "3"
        arts = {a.path for a in client.list_artifacts(run["run_id"])}
        assert "config.json" in arts
        if status == "TERMINATED":
            assert {"model", "per_microbe_pcc.json"} <= arts
    baselines = runs[runs["tags.depmicro.kind"] == "baseline"]
    assert set(baselines["tags.depmicro.method"]) == {"mean", "knn"}
    assert baselines["metrics.test_pcc"].notna().all()


def test_finished_trial_artifacts_reload_and_match(quickstart_run, tmp_path):
    """The logged model is the one scored: reloading it and imputing reproduces test_pcc_per_microbe."""
    import mlflow
    import numpy as np

    from depmicro.core.model.bundle import load_model
    from depmicro.core.data.evaluation import evaluate, make_split, training_view
    from depmicro.core.data.synthetic import make_synthetic

    r = quickstart_run
    runs = _runs(r["name"], r["uri"])
    fin = runs[(runs["tags.depmicro.kind"] == "trial") & (runs["tags.depmicro.status"] == "TERMINATED")].iloc[0]
    mlflow.set_tracking_uri(r["uri"])
    local = Path(mlflow.artifacts.download_artifacts(run_id=fin["run_id"], dst_path=str(tmp_path)))
    imp = load_model(local / "model")
    per = json.loads((local / "per_microbe_pcc.json").read_text())
    data, _ = make_synthetic(n_samples=300, n_taxa=30, seed=0)
    Y = data.normalized
    split = make_split(Y, seed=0, test_ratio=0.1, val_ratio=0.1)
    got = evaluate(Y, imp.impute(training_view(Y, split), split.observed, None), split.test)
    assert got["pcc_per_microbe"] == pytest.approx(fin["metrics.test_pcc_per_microbe"], abs=1e-6)
    assert got["n_heldout"] == int(fin["metrics.test_n_heldout"])
    assert len(per["var_names"]) == len(per["test"]) == 30
    vals = np.array([np.nan if v is None else v for v in per["test"]])
    assert np.nanmean(vals) == pytest.approx(fin["metrics.test_pcc_per_microbe"], abs=1e-6)


def test_dependency_statistics_computed_once_on_the_driver(quickstart_run):
    err = quickstart_run["stderr"]
    assert err.count("dependency statistics for synthetic/s0") == 1
    cache = Path(quickstart_run["storage"]) / ".dep_cache"
    assert len(list(cache.glob("deps-*.npz"))) == 1


def test_run_refuses_an_existing_study(quickstart_run, capsys):
    r = quickstart_run
    code = main(["study", "run", str(r["spec"]), "--tracking-uri", r["uri"], "--storage", str(r["storage"])])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "depmicro study resume quickstart" in err
