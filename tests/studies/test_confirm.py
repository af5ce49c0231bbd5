"""confirm: the K best search configurations re-run on extra held-out seeds; the winner is the best
lower 95 % t bound, not the best single trial."""
from __future__ import annotations

import json
import math

import pytest
import yaml
from scipy import stats

from depmicro.core.errors import DepmicroError
from depmicro.studies.confirm import bound, confirm_table, rank_configs
from depmicro.studies.spec import spec_from_dict


def _raw(**top) -> dict:
    return {"name": "conf", "datasets": [{"path": "synthetic", "synthetic": {"n_samples": 80, "n_taxa": 30, "seed": 1}}],
            "base_config": {"epochs": 2, "timesteps": 50, "sampling_fraction": 10, "vae_epochs": 3, "latent_dim": 2,
                            "vae_hidden": 16, "hidden_dim": 16, "n_layers": 1, "n_heads": 2, "use_metadata": False,
                            "vae_pretrain": False},
            "search_space": {"lr": {"type": "loguniform", "low": 1e-4, "high": 3e-3}},
            "num_samples": 3, "scheduler": "none", "confirm": {"top_k": 2, "seeds": [7, 8]}, **top}


def _run(rank, v, status="TERMINATED"):
    return {"rank": rank, "status": status, "metrics": {"best_val_pcc_per_microbe": v, "test_pcc_per_microbe": v - 0.1}}


def test_winner_is_the_best_lower_bound_not_the_best_mean():
    points = [{"rank": 1, "config": {"lr": 1e-3}, "search_mean": 0.95, "search_n": 1},
              {"rank": 2, "config": {"lr": 2e-4}, "search_mean": 0.80, "search_n": 1}]
    runs = [_run(1, 0.9), _run(1, 0.5), _run(2, 0.62), _run(2, 0.60), _run(2, 0.99, status="ERROR")]
    t = confirm_table(points, runs, "val_pcc_per_microbe", "max")
    r1, r2 = t["rows"]
    assert r1["confirm_best_val_pcc_per_microbe"] == pytest.approx(0.7)  # the higher mean ...
    assert r2["confirm_best_val_pcc_per_microbe"] == pytest.approx(0.61) and r2["confirm_n"] == 2  # the failed run is out
    q = stats.t.ppf(0.975, 1)
    assert r1["confirm_best_val_pcc_per_microbe_bound95"] == pytest.approx(0.7 - q * math.sqrt(0.08) / math.sqrt(2))
    assert r2["confirm_best_val_pcc_per_microbe_bound95"] == pytest.approx(0.61 - q * math.sqrt(0.0002) / math.sqrt(2))
    assert t["winner"] == 2 and t["winner_config"] == {"lr": 2e-4}  # ... loses to the tighter one
    assert r2["confirm_test_pcc_per_microbe"] == pytest.approx(0.51)
    assert r1["search_best_val_pcc_per_microbe"] == 0.95


def test_lower_is_better_uses_the_upper_bound():
    mean, sd, b = bound([1.0, 1.2, 1.1], "min")
    assert mean == pytest.approx(1.1) and b == pytest.approx(1.1 + stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3))
    assert bound([1.0], "max")[2] == -math.inf


def test_rank_configs_groups_seeds_of_one_configuration():
    trials = [{"trial_id": "a", "status": "TERMINATED", "config": {"lr": 1.0}, "metrics": {"best_val_pcc": 0.9}},
              {"trial_id": "b", "status": "TERMINATED", "config": {"lr": 1.0}, "metrics": {"best_val_pcc": 0.1}},
              {"trial_id": "c", "status": "TERMINATED", "config": {"lr": 2.0}, "metrics": {"best_val_pcc": 0.6}},
              {"trial_id": "d", "status": "STOPPED", "config": {"lr": 3.0}, "metrics": {"best_val_pcc": 0.99}}]
    ranked = rank_configs(trials, ["lr"], "val_pcc", "max")
    assert [(r["config"]["lr"], r["mean"], r["n"]) for r in ranked] == [(2.0, 0.6, 1), (1.0, 0.5, 2)]


@pytest.mark.parametrize("value, message", [
    ({"top_k": 2, "seeds": [7]}, "at least two seeds"),
    ({"top_k": 2, "seeds": [0, 7]}, "did not use; 0 is in seeds"),
    ({"top_k": 0, "seeds": [7, 8]}, "confirm.top_k must be >= 1"),
    ({"top_k": 2}, "must be a mapping with 'top_k' and 'seeds'"),
    ({"top_k": 2, "seeds": [7, 7]}, "duplicate"),
])
def test_bad_confirm(value, message):
    with pytest.raises(DepmicroError, match=message):
        spec_from_dict({**_raw(), "confirm": value})


@pytest.mark.slow
@pytest.mark.cluster
def test_confirmation_runs_k_times_seeds_and_picks_by_bound(tmp_path):
    from mlflow.tracking import MlflowClient

    from depmicro.analysis.export import export
    from depmicro.analysis.report import analyze
    from tests.conftest import run_study, study_args

    path = tmp_path / "conf.yaml"
    path.write_text(yaml.safe_dump(_raw()))
    uri, storage = study_args(tmp_path)
    summary = run_study(path, tmp_path, 500)
    assert summary["state"] == "FINISHED" and summary["confirm"]["finished_trials"] == 4 == summary["confirm"]["expected_trials"]

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("depmicro-conf")
    runs = client.search_runs([exp.experiment_id])
    kinds = [r.data.tags.get("depmicro.kind") for r in runs]
    assert kinds.count("trial") == 3 and kinds.count("confirm") == 4  # K=2 x 2 seeds extra trials
    search = {r.data.tags["depmicro.trial_id"]: r for r in runs if r.data.tags.get("depmicro.kind") == "trial"}
    conf = [r for r in runs if r.data.tags.get("depmicro.kind") == "confirm"]
    assert sorted((r.data.tags["depmicro.confirm_rank"], r.data.tags["depmicro.seed"]) for r in conf) == [
        ("1", "7"), ("1", "8"), ("2", "7"), ("2", "8")]
    # rank 1 and 2 are the two best search configurations by best validation score (ties allowed)
    score = {float(r.data.params["lr"]): r.data.metrics["best_val_pcc_per_microbe"] for r in search.values()}
    ranked_lr = []
    for rank in ("1", "2"):
        lrs = {float(c.data.params["lr"]) for c in conf if c.data.tags["depmicro.confirm_rank"] == rank}
        assert len(lrs) == 1 and lrs <= set(score)
        ranked_lr.append(lrs.pop())
    (left_out,) = set(score) - set(ranked_lr)
    assert score[ranked_lr[0]] >= score[ranked_lr[1]] >= score[left_out]
    # the winner: best lower bound over the confirm seeds, recomputed here from the runs
    lower = {}
    for rank in ("1", "2"):
        v = [c.data.metrics["best_val_pcc_per_microbe"] for c in conf if c.data.tags["depmicro.confirm_rank"] == rank]
        m, s = sum(v) / 2, stats.tstd(v)
        lower[int(rank)] = m - stats.t.ppf(0.975, 1) * s / math.sqrt(2)
    assert summary["confirm"]["winner"] == max(lower, key=lower.get)
    parent = next(r for r in runs if r.data.tags.get("depmicro.kind") == "study")
    assert client.get_run(parent.info.run_id).data.tags["depmicro.winner_rank"] == str(summary["confirm"]["winner"])

    rep = analyze("conf", tmp_path / "report", tracking_uri=uri, log_to_parent=False)
    assert rep["confirm"]["winner"] == summary["confirm"]["winner"] and "confirm.csv" in rep["files"]
    assert "search-phase against confirmed" in (tmp_path / "report" / "report.html").read_text()
    res = export("conf", tmp_path / "bundle", tracking_uri=uri)
    prov = json.loads((tmp_path / "bundle" / "provenance.json").read_text())
    assert prov["confirmed_winner"]["rank"] == summary["confirm"]["winner"]
    assert float(search[res["trial_id"]].data.params["lr"]) == pytest.approx(summary["confirm"]["winner_config"]["lr"])
