"""`inference:` grids: one training per trial, every setting scored on its checkpoint, read back by
status, analyze and export."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from depmicro.core.errors import DepmicroError
from depmicro.studies.inference import best_setting, label, metric_key, pareto_front, parse_label, trial_settings
from depmicro.studies.spec import spec_from_dict, spec_from_json

FRACTIONS = [5, 10, 25]
ETAS = [0.0, 1.0]


def _raw(**top) -> dict:
    return {"name": "inf", "datasets": [{"path": "synthetic", "synthetic": {"n_samples": 80, "n_taxa": 30, "seed": 1}}],
            "base_config": {"epochs": 2, "timesteps": 50, "vae_epochs": 3, "latent_dim": 2, "vae_hidden": 16,
                            "hidden_dim": 16, "n_layers": 1, "n_heads": 2, "use_metadata": False, "vae_pretrain": False},
            "search_space": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-3}},
            "num_samples": 2, "scheduler": "none", **top}


INFERENCE = {"sampling_fraction": FRACTIONS, "sampler_eta": ETAS, "default": {"sampling_fraction": 10}}


def test_spec_types_the_grid_and_keeps_trial_count():
    plain = spec_from_dict(_raw())
    spec = spec_from_dict(_raw(inference={**INFERENCE, "sampler_eta": [0, 1]}))  # ints typed as the float field
    assert spec.inference.grid == {"sampling_fraction": (5, 10, 25), "sampler_eta": (0.0, 1.0)}
    assert spec.inference.default == {"sampling_fraction": 10, "sampler_eta": 0.0}
    assert len(spec.inference.settings()) == 6
    assert spec.n_trials() == plain.n_trials() == 2
    assert spec_from_json(json.loads(json.dumps(spec.to_dict()))).inference == spec.inference


@pytest.mark.parametrize("inference, message", [
    ({"lr": [0.1]}, "inference.lr: not an inference knob"),
    ({"sampling_fraction": [5, 500]}, "exceeds timesteps"),
    ({"sampling_fraction": [5, 5.0]}, "duplicate value"),
    ({"sampling_fraction": [5], "default": {"sampling_fraction": 10}}, "not one of the grid's values"),
    ({"sampling_fraction": [5], "default": {"sampler_eta": 0}}, "inference.default.sampler_eta: not in the inference grid"),
    ({"default": {}}, "at least one knob"),
    ([5, 10], "must be a mapping"),
])
def test_bad_inference_is_one_line(inference, message):
    with pytest.raises(DepmicroError, match=message):
        spec_from_dict(_raw(inference=inference))


def test_inference_knob_cannot_also_be_searched():
    raw = _raw(inference={"sampling_fraction": [5, 10]})
    raw["search_space"]["sampling_fraction"] = {"type": "choice", "values": [5, 10]}
    with pytest.raises(DepmicroError, match="also in search_space"):
        spec_from_dict(raw)


def test_searched_timesteps_checked_against_every_setting():
    raw = _raw(inference={"sampling_fraction": [5, 40]})
    raw["search_space"]["timesteps"] = {"type": "choice", "values": [30, 50]}
    with pytest.raises(DepmicroError, match="timesteps value 30 with inference"):
        spec_from_dict(raw)


def test_labels_round_trip_and_best_setting():
    s = {"sampling": "adaptive", "sampling_fraction": 5, "sampler_eta": 1.0}
    assert parse_label(label(s)) == s
    m = {metric_key(label({"sampling_fraction": 5}), "val_pcc_per_microbe"): 0.4,
         metric_key(label({"sampling_fraction": 5}), "seconds"): 2.0,
         metric_key(label({"sampling_fraction": 10}), "val_pcc_per_microbe"): 0.5,
         metric_key(label({"sampling_fraction": 10}), "val_rmse"): 0.9,
         metric_key(label({"sampling_fraction": 20}), "val_rmse"): 0.7,
         "val_pcc_per_microbe": 0.99}
    assert set(trial_settings(m)) == {"sampling_fraction-5", "sampling_fraction-10", "sampling_fraction-20"}
    assert best_setting(m, "pcc_per_microbe")["setting"] == {"sampling_fraction": 10}
    assert best_setting(m, "rmse")["setting"] == {"sampling_fraction": 20}  # lower is better
    assert best_setting({"val_pcc": 1.0}, "pcc") is None


def test_pareto_front():
    pts = [(0.5, 1.0), (0.6, 2.0), (0.55, 3.0), (0.7, 10.0), (0.4, 0.5), (0.6, 2.0)]
    assert pareto_front(pts) == [True, True, False, True, True, False]
    assert pareto_front([(1.0, 2.0), (0.5, 1.0)], higher_is_better=False) == [False, True]
    assert pareto_front([(1.0, 1.0), (0.5, 2.0)], higher_is_better=False) == [True, True]


@pytest.mark.slow
@pytest.mark.cluster
def test_study_scores_six_settings_per_trial(tmp_path, capsys):
    """3 sampling fractions x 2 sampler settings: as many trials as without the grid, 6 settings each in
    MLflow, the default setting's scores equal to the trial's, and analyze/export read them."""
    import yaml
    from mlflow.tracking import MlflowClient

    from depmicro.analysis.export import export
    from depmicro.analysis.report import analyze
    from depmicro.core.cli import main
    from tests.conftest import run_study, study_args

    path = tmp_path / "inf.yaml"
    raw = _raw(inference=INFERENCE)
    raw["base_config"]["estimate"] = "sample"  # the sampler knobs act on a draw; the mean estimate never samples
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    uri, storage = study_args(tmp_path)
    summary = run_study(path, tmp_path, 400)
    assert summary["trials"] == 2 and summary["state"] == "FINISHED"

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("depmicro-inf")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("depmicro.kind") == "trial"]
    assert len(runs) == 2
    for r in runs:
        sets = trial_settings(r.data.metrics)
        assert len(sets) == 6
        assert {tuple(sorted(parse_label(x).items())) for x in sets} == {
            (("sampler_eta", e), ("sampling_fraction", f)) for f in FRACTIONS for e in ETAS}
        for scores in sets.values():
            assert {"val_pcc_per_microbe", "test_pcc_per_microbe", "seconds"} <= set(scores)
            assert scores["seconds"] > 0
        default = sets["sampling_fraction-10/sampler_eta-0.0"]
        assert default["test_pcc_per_microbe"] == pytest.approx(r.data.metrics["test_pcc_per_microbe"])
        assert r.data.params["sampling_fraction"] == "10" and r.data.params["sampler_eta"] == "0.0"
        # each setting is its own imputation: the stride and eta change the draw, so the scores differ
        assert len({round(v["val_pcc_per_microbe"], 12) for v in sets.values()}) > 1
        table = json.loads(Path(client.download_artifacts(r.info.run_id, "inference.json", str(tmp_path))).read_text())
        assert len(table) == 6 and {row["label"] for row in table} == set(sets)

    assert main(["study", "status", "inf", "--tracking-uri", uri, "--storage", str(storage), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    for t in st["trials"]:
        best = t["inference_best"]
        vals = {lab: s["val_pcc_per_microbe"] for lab, s in trial_settings(t["metrics"]).items()}
        assert best["label"] == max(vals, key=vals.get)

    rep = analyze("inf", tmp_path / "report", tracking_uri=uri, log_to_parent=False)
    assert rep["inference"]["settings"] == 6 and rep["inference"]["rows"] == 12 and rep["inference"]["pareto"]
    assert "fig_inference_pareto.png" in rep["files"] and "inference.csv" in rep["files"]
    assert "Pareto front" in (tmp_path / "report" / "report.html").read_text()

    res = export("inf", tmp_path / "bundle", tracking_uri=uri)
    winner = next(t for t in st["trials"] if t["trial_id"] == res["trial_id"])
    cfg = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert {k: cfg[k] for k in ("sampling_fraction", "sampler_eta")} == winner["inference_best"]["setting"]
    assert res["inference"]["label"] == winner["inference_best"]["label"]
