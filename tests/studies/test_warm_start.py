"""warm_start: the earlier study's best configurations (mean over its data sets and seeds) are this
study's first Optuna trials; configurations outside the search space are refused in one line."""
from __future__ import annotations

import json

import pytest
import yaml

from depmicro.core.cli import main
from depmicro.core.errors import DepmicroError
from depmicro.studies.spec import spec_from_dict
from depmicro.studies.warm_start import warm_points
from tests.mlflow_study import logged_study as shared_study  # noqa: F401  (fixture)

# tests/mlflow_study.py: mean best_val_pcc_per_microbe over its 6 trials per arm is 0.655 for
# ar_decay 0.9, 0.645 for 0.7 (its single luckiest trial, 0.91, is an 0.7 one) and 0.535 for 0.5
EARLIER_BEST = [0.9, 0.7, 0.5]


@pytest.fixture
def logged_study(shared_study, tmp_path) -> dict:
    """A private copy of the session's store: a refused `study run` still opens it (WAL mode), and the
    bad-input tests snapshot the shared one byte for byte."""
    import sqlite3

    src = shared_study["tracking_uri"].removeprefix("sqlite:///")
    dst = tmp_path / "warm_store.db"
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return {**shared_study, "tracking_uri": f"sqlite:///{dst}"}


def _raw(low: float = 0.4, top_k: int = 2, **top) -> dict:
    return {"name": "warm", "datasets": [{"path": "synthetic", "synthetic": {"n_samples": 80, "n_taxa": 30, "seed": 1}}],
            "base_config": {"epochs": 1, "timesteps": 50, "sampling_fraction": 10, "vae_epochs": 3, "latent_dim": 2,
                            "vae_hidden": 16, "hidden_dim": 16, "n_layers": 1, "n_heads": 2, "use_metadata": False,
                            "vae_pretrain": False},
            "search_space": {"ar_decay": {"type": "uniform", "low": low, "high": 1.0}},
            "warm_start": {"study": "unit", "top_k": top_k}, "num_samples": 3, "scheduler": "none", **top}


def test_points_are_the_best_mean_configurations(logged_study):
    spec = spec_from_dict(_raw(top_k=3))
    assert [p["ar_decay"] for p in warm_points(spec, logged_study["tracking_uri"])] == EARLIER_BEST
    spec = spec_from_dict(_raw(top_k=1))
    assert warm_points(spec, logged_study["tracking_uri"]) == [{"ar_decay": 0.9}]


def test_outside_the_search_space_is_refused(logged_study):
    spec = spec_from_dict(_raw(low=0.8, top_k=2))
    with pytest.raises(DepmicroError, match=r"#2 configuration has ar_decay=0.7, outside this study's search_space.ar_decay \(\[0.8, 1\]\)"):
        warm_points(spec, logged_study["tracking_uri"])


def test_refusal_through_the_cli_creates_nothing(logged_study, tmp_path, capsys):
    path = tmp_path / "warm.yaml"
    path.write_text(yaml.safe_dump(_raw(low=0.8)))
    code = main(["study", "run", str(path), "--tracking-uri", logged_study["tracking_uri"], "--storage", str(tmp_path / "st")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("depmicro study run: error: warm_start: study 'unit'")
    assert not (tmp_path / "st").exists()
    from mlflow.tracking import MlflowClient

    assert MlflowClient(logged_study["tracking_uri"]).get_experiment_by_name("depmicro-warm") is None


@pytest.mark.parametrize("value, message", [
    ({"study": "warm"}, "names this study itself"),
    ({"top_k": 2}, "must be a mapping with 'study'"),
    ({"study": "unit", "top_k": 0}, "warm_start.top_k must be >= 1"),
    ({"study": "unit", "k": 2}, "must be a mapping"),
])
def test_bad_warm_start(value, message):
    with pytest.raises(DepmicroError, match=message):
        spec_from_dict({**_raw(), "warm_start": value})


def test_warm_start_needs_optuna():
    raw = _raw(search="random")
    with pytest.raises(DepmicroError, match="warm_start needs search: optuna"):
        spec_from_dict(raw)


@pytest.mark.slow
@pytest.mark.cluster
def test_first_trials_are_the_earlier_best(logged_study, tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.conftest import run_study

    path = tmp_path / "warm.yaml"
    path.write_text(yaml.safe_dump(_raw(top_k=2)))
    uri = logged_study["tracking_uri"]
    run_study(path, tmp_path, 400, uri=uri, storage=tmp_path / "st")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("depmicro-warm")
    trials = sorted((r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("depmicro.kind") == "trial"),
                    key=lambda r: r.info.start_time)  # Optuna trial ids are random: order by start
    assert len(trials) == 3
    assert [float(r.data.params["ar_decay"]) for r in trials[:2]] == EARLIER_BEST[:2]
    assert float(trials[2].data.params["ar_decay"]) not in EARLIER_BEST[:2]  # then TPE's own suggestion
    parent = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("depmicro.kind") == "study")
    art = json.loads(open(client.download_artifacts(parent.info.run_id, "warm_start.json", str(tmp_path))).read())
    assert art == {"study": "unit", "points": [{"ar_decay": 0.9}, {"ar_decay": 0.7}]}
