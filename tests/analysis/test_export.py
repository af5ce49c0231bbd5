"""`depmicro export`: the best trial's model/ artifact becomes a verified bundle; the bundle imputes
exactly as the tracked model does; tampering is refused; the registered pyfunc model imputes a CSV."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from depmicro.core.cli import build_parser, main
from depmicro.core.errors import DepmicroError
from depmicro.core.io.manifest import sha256_file
from tests.mlflow_study import BEST_VAL, PPM, STUDY, counts_table, logged_study, other_metrics, tiny_model  # noqa: F401

MODEL_FILES = ("model.safetensors", "config.json", "dependency.npz", "normalization.json", "taxa.json", "metadata_encoder.json")


@pytest.fixture(scope="module")
def exported(logged_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "bundle"
    code = main(["export", STUDY, "--tracking-uri", logged_study["tracking_uri"], "--out", str(out),
                 "--register", "depmicro-unit", "--json"])
    assert code == 0
    return out


def _trial_k(run_key: str) -> int:
    """Position (1-based) of a trial in the logging order of tests/mlflow_study.py: its model seed is 100 + k."""
    from tests.mlflow_study import ARMS, DATASETS, SEEDS

    arm, dataset, seed = run_key.split("|")
    return ARMS.index(arm) * 6 + DATASETS.index(dataset) * 3 + SEEDS.index(int(seed)) + 1


def test_export_picks_the_best_validation_trial(exported, logged_study):
    key = "|".join(map(str, BEST_VAL))
    prov = json.loads((exported / "provenance.json").read_text())
    assert prov["run_id"] == logged_study["runs"][key]
    assert (prov["study"], prov["dataset"], prov["seed"], prov["variant"]) == (STUDY, "beta", 1, "ar_decay=0.7")
    assert prov["trial_id"] == f"trial_{_trial_k(key):03d}" and prov["git_commit"] == "abc1234"
    assert prov["tracking_uri"] == logged_study["tracking_uri"] and prov["n_candidates"] == 18
    metrics = json.loads((exported / "metrics.json").read_text())
    ppm = PPM[("ar_decay=0.7", "beta")][1]
    assert metrics["test"]["pcc_per_microbe"] == pytest.approx(ppm)
    assert metrics["test"]["rmse"] == pytest.approx(other_metrics(ppm)["rmse"])
    assert metrics["val"]["best_val_pcc_per_microbe"] == pytest.approx(0.91) and metrics["val"]["epoch"] == 2
    assert metrics["selection"] == {"metric": "best_val_pcc_per_microbe", "mode": "max", "value": 0.91}


def test_bundle_is_the_tracked_model_byte_for_byte(exported, logged_study):
    """The shipped files are those save_model wrote for that trial (and only those plus metrics/provenance)."""
    from depmicro.core.model.bundle import save_model

    key = "|".join(map(str, BEST_VAL))
    ref = exported.parent / "reference"
    save_model(tiny_model(100 + _trial_k(key), 0.7), ref)
    for name in MODEL_FILES:
        assert sha256_file(exported / name) == sha256_file(ref / name), name
    manifest = json.loads((exported / "manifest.json").read_text())
    assert sorted(manifest["files"]) == sorted([*MODEL_FILES, "metrics.json", "provenance.json"])


def test_bundle_imputes_like_the_original_and_replays_its_metrics(exported, tmp_path):
    from depmicro.analysis.export import replay
    from depmicro.core.model.bundle import load_model
    from depmicro.core.data import load_dataset
    from depmicro.core.data.evaluation import evaluate, make_split, training_view

    data = counts_table(tmp_path / "counts.csv")
    ds = load_dataset(data)
    Y = ds.normalized
    split = make_split(Y, seed=1, test_ratio=0.1, val_ratio=0.1)
    original = tiny_model(100 + _trial_k("|".join(map(str, BEST_VAL))), 0.7)
    want = evaluate(Y, original.impute(training_view(Y, split), split.observed), split.test)
    got = replay(exported, data)
    assert got == pytest.approx(want, abs=1e-9)
    filled = load_model(exported).impute(training_view(Y, split), split.observed)
    assert np.array_equal(filled, original.impute(training_view(Y, split), split.observed))


def test_tampered_bundle_is_refused(exported, tmp_path):
    import shutil

    from depmicro.core.model.bundle import load_model

    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    raw = bytearray((bad / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(DepmicroError, match="model.safetensors does not match its SHA-256"):
        load_model(bad)
    prov = json.loads((bad / "provenance.json").read_text())
    shutil.copy2(exported / "model.safetensors", bad / "model.safetensors")
    prov["dataset"] = "alpha"  # provenance is covered by the manifest too
    (bad / "provenance.json").write_text(json.dumps(prov))
    with pytest.raises(DepmicroError, match="provenance.json does not match"):
        load_model(bad)


def test_select_by_another_metric_and_bad_requests(logged_study, tmp_path, capsys):
    from depmicro.analysis.export import export

    res = export(STUDY, tmp_path / "b", tracking_uri=logged_study["tracking_uri"], metric="test_rmse", mode="min")
    assert (res["dataset"], res["seed"]) == ("beta", 2)  # highest test pcc_per_microbe, 0.75 -> lowest rmse
    assert res["value"] == pytest.approx(1 - 0.75)
    res = export(STUDY, tmp_path / "b", tracking_uri=logged_study["tracking_uri"], dataset="alpha")
    assert (res["dataset"], res["trial_id"]) == ("alpha", "trial_015")  # best alpha val: 0.5 + 0.01 * 15
    assert json.loads((tmp_path / "b" / "provenance.json").read_text())["n_candidates"] == 9
    code = main(["export", STUDY, "--tracking-uri", logged_study["tracking_uri"], "--metric", "val_nope", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "metric 'val_nope' was not logged" in err
    assert not (tmp_path / "c").exists()
    other = tmp_path / "notabundle"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    code = main(["export", STUDY, "--tracking-uri", logged_study["tracking_uri"], "--out", str(other)])
    assert code == 2 and "refusing to replace" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "mine"


def _counts_with_gaps(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    df = pd.read_csv(counts_table(tmp_path / "counts.csv"), index_col=0).astype(float)
    df.iloc[0, 1] = np.nan
    df.iloc[2, 5] = np.nan
    df.iloc[7, 0] = np.nan
    path = tmp_path / "in.csv"
    df.to_csv(path)
    return path, df


def test_registered_pyfunc_imputes_a_frame(exported, logged_study, tmp_path):
    import mlflow

    from depmicro.analysis.pyfunc import impute_frame
    from depmicro.core.model.bundle import load_model
    from depmicro.core.data import normalize

    _, df = _counts_with_gaps(tmp_path)
    mlflow.set_tracking_uri(logged_study["tracking_uri"])
    model = mlflow.pyfunc.load_model("models:/depmicro-unit/1")
    out = model.predict(df)
    assert list(out.columns) == list(df.columns) and list(out.index) == list(df.index)
    assert np.isfinite(out.to_numpy()).all()
    obs = df.notna().to_numpy()
    assert np.allclose(out.to_numpy()[obs], normalize(df.fillna(0).to_numpy())[obs])
    direct = impute_frame(load_model(exported), df)
    assert np.array_equal(out.to_numpy(), direct.to_numpy())
    with pytest.raises(Exception, match="do not match the model's 12 taxa"):
        model.predict(df.drop(columns=["taxon_4"]))


def test_mlflow_models_predict_imputes_a_csv(exported, logged_study, tmp_path):
    path, df = _counts_with_gaps(tmp_path)
    out = tmp_path / "pred.json"
    env = {**os.environ, "MLFLOW_TRACKING_URI": logged_study["tracking_uri"]}
    proc = subprocess.run([str(Path(sys.executable).with_name("mlflow")), "models", "predict", "-m", "models:/depmicro-unit/1",
                           "-i", str(path), "-t", "csv", "--env-manager", "local", "-o", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pred = pd.DataFrame(json.loads(out.read_text())["predictions"])
    assert pred.shape == df.shape and np.isfinite(pred.to_numpy()).all()
    from depmicro.analysis.pyfunc import impute_frame
    from depmicro.core.model.bundle import load_model

    direct = impute_frame(load_model(exported), df)
    assert np.allclose(pred[list(df.columns)].to_numpy(), direct.to_numpy(), rtol=0, atol=1e-12)


def test_zeros_can_be_treated_as_missing(exported, tmp_path):
    from depmicro.analysis.pyfunc import impute_frame
    from depmicro.core.model.bundle import load_model
    from depmicro.core.data import normalize

    _, df = _counts_with_gaps(tmp_path)
    imp = load_model(exported)
    keep = impute_frame(imp, df)
    fill = impute_frame(imp, df, zeros_missing=True)
    zeros = (df == 0).to_numpy()
    assert zeros.any()
    assert (keep.to_numpy()[zeros] == 0).all()          # observed zeros stay zero by default
    assert (fill.to_numpy()[zeros] != 0).any()          # ... and are imputed when zeros mean "missing"
    obs = df.notna().to_numpy() & ~zeros
    assert np.allclose(fill.to_numpy()[obs], normalize(df.fillna(0).to_numpy())[obs])


def test_model_cli_imputes_the_bundle_like_the_pyfunc_model(exported, tmp_path, capsys):
    """`depmicro impute` (core) and the registry's pyfunc model agree on an exported bundle."""
    from depmicro.analysis.pyfunc import impute_frame
    from depmicro.core.model.bundle import load_model

    if "impute" not in build_parser()._subparsers._group_actions[0].choices:
        pytest.skip("`depmicro impute` not registered (core model CLI)")
    path, df = _counts_with_gaps(tmp_path)
    out = tmp_path / "imputed.csv"
    assert main(["impute", "--model", str(exported), "--data", str(path), "--out", str(out)]) == 0
    capsys.readouterr()
    cli = pd.read_csv(out, index_col=0)
    direct = impute_frame(load_model(exported), df)
    assert list(cli.columns) == list(direct.columns)
    assert np.allclose(cli.to_numpy(), direct.to_numpy(), rtol=0, atol=1e-12)
