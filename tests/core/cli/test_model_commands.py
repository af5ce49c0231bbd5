"""`depmicro train` / `depmicro impute` end to end on a small synthetic set (with metadata)."""
from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from depmicro.core.cli import main
from depmicro.core.data.synthetic import make_synthetic, write_synthetic

REPO = Path(__file__).resolve().parents[3]
FAST = ["latent_dim=2", "vae_hidden=16", "hidden_dim=16", "n_layers=1", "n_heads=2", "vae_epochs=2", "epochs=1",
        "timesteps=100", "sampling_fraction=20", "f_threshold=2", "mi_threshold=0.02"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    data = write_synthetic(d / "syn.h5ad", n_samples=60, n_taxa=12, n_directed=2, n_symmetric=2)
    args = ["train", "studies/configs/tiny.yaml", "--data", str(data), "--out", str(d / "model"), "--json", "--seed", "1"]
    for kv in FAST:
        args += ["--set", kv]
    proc = subprocess.run([sys.executable, "-m", "depmicro.core.cli", *args], capture_output=True, text=True,
                          cwd=str(__import__("pathlib").Path(__file__).resolve().parents[3]),
                          env={**__import__("os").environ, "DEPMICRO_CACHE": str(d / "cache")}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return d, data, json.loads(proc.stdout)


def test_train_prints_val_and_test_metrics(trained):
    d, _, out = trained
    assert set(out) >= {"val", "test", "seconds"}
    for part in ("val", "test"):
        assert {"pcc", "cos", "rmse", "mae", "pcc_per_microbe", "n_microbes", "n_heldout"} <= set(out[part])
    assert out["seed"] == 1 and (d / "model" / "manifest.json").is_file()
    assert not [p for p in d.iterdir() if p.name.startswith(".model")]  # no temp dirs left behind


def test_impute_fills_marked_entries_and_keeps_observed(trained, capsys):
    d, _, _ = trained
    ds, _ = make_synthetic(n_samples=60, n_taxa=12, n_directed=2, n_symmetric=2)
    counts = pd.DataFrame(ds.counts, index=ds.obs_names, columns=ds.var_names)
    holes = np.zeros(counts.shape, dtype=bool)
    holes[::7, 3] = True
    holes[2, :4] = True
    holes[10, :] = True  # nothing observed: the prior alone fills it, and the report counts it
    counts = counts.mask(holes)
    counts.to_csv(d / "holes.csv")
    assert main(["impute", "--model", str(d / "model"), "--data", str(d / "holes.csv"), "--out", str(d / "filled.tsv"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n_imputed"] == holes.sum() and rep["n_samples_without_observed"] == 1
    out = pd.read_csv(d / "filled.tsv", sep="\t", index_col=0)
    assert list(out.columns) == ds.var_names and np.isfinite(out.to_numpy()).all()
    from depmicro.core.data import normalize

    Y = normalize(np.where(holes, 0.0, ds.counts))
    np.testing.assert_allclose(out.to_numpy()[~holes], Y[~holes], rtol=1e-12, atol=1e-12)
    assert main(["impute", "--model", str(d / "model"), "--data", str(d / "holes.csv"), "--out", str(d / "z.h5ad"), "--zeros"]) == 0
    import anndata as ad

    a = ad.read_h5ad(d / "z.h5ad")
    assert (a.layers["observed"][ds.counts == 0] == 0).all() and a.shape == (60, 12)


def test_impute_reads_taxa_by_name_in_any_column_order(trained, capsys):
    """The same table with its columns shuffled imputes the same value for each (sample, taxon), and the
    output keeps the file's own column order."""
    d, _, _ = trained
    ds, _ = make_synthetic(n_samples=60, n_taxa=12, n_directed=2, n_symmetric=2)
    holes = np.zeros(ds.counts.shape, dtype=bool)
    holes[::5, 1] = True
    holes[3, 4:9] = True
    counts = pd.DataFrame(ds.counts, index=ds.obs_names, columns=ds.var_names).mask(holes)
    counts.to_csv(d / "ordered.csv")
    order = list(np.random.default_rng(0).permutation(ds.var_names))
    assert order != ds.var_names
    counts[order].to_csv(d / "shuffled.csv")
    for name in ("ordered", "shuffled"):
        assert main(["impute", "--model", str(d / "model"), "--data", str(d / f"{name}.csv"), "--out",
                     str(d / f"{name}_out.csv"), "--uncertainty", "2"]) == 0
    capsys.readouterr()
    a = pd.read_csv(d / "ordered_out.csv", index_col=0)
    b = pd.read_csv(d / "shuffled_out.csv", index_col=0)
    assert list(b.columns) == order and list(a.columns) == ds.var_names
    pd.testing.assert_frame_equal(a, b[ds.var_names], check_exact=True)
    sa = pd.read_csv(d / "ordered_out.std.csv", index_col=0)
    sb = pd.read_csv(d / "shuffled_out.std.csv", index_col=0)
    assert list(sb.columns) == order and (sb[ds.var_names].to_numpy()[~holes] == 0).all()
    assert np.array_equal(sa.to_numpy() > 0, sb[ds.var_names].to_numpy() > 0)


def test_impute_uncertainty_is_a_std_per_entry_zero_where_observed(trained, capsys):
    d, _, _ = trained
    ds, _ = make_synthetic(n_samples=60, n_taxa=12, n_directed=2, n_symmetric=2)
    holes = np.zeros(ds.counts.shape, dtype=bool)
    holes[::3, 2] = True
    holes[5, :6] = True
    pd.DataFrame(ds.counts, index=ds.obs_names, columns=ds.var_names).mask(holes).to_csv(d / "u.csv")
    assert main(["impute", "--model", str(d / "model"), "--data", str(d / "u.csv"), "--out", str(d / "u_out.csv"),
                 "--uncertainty", "4", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["std"] == str(d / "u_out.std.csv") and rep["estimate"] == "mean"
    std = pd.read_csv(d / "u_out.std.csv", index_col=0)
    assert std.shape == ds.counts.shape and list(std.columns) == ds.var_names
    s = std.to_numpy()
    assert (s >= 0).all() and (s[~holes] == 0).all() and (s[holes] > 0).any()
    assert main(["impute", "--model", str(d / "model"), "--data", str(d / "u.csv"), "--out", str(d / "u.h5ad"), "--uncertainty"]) == 0
    import anndata as ad

    a = ad.read_h5ad(d / "u.h5ad")
    assert a.layers["std"].shape == a.shape and (a.layers["std"][~holes] == 0).all() and (a.layers["std"] >= 0).all()
    assert main(["impute", "--model", str(d / "model"), "--data", str(d / "u.csv"), "--out", str(d / "v.csv"), "--uncertainty", "1"]) == 2
    assert "takes 2 to 1,000 draws, not 1" in capsys.readouterr().err and not (d / "v.csv").exists()
    assert main(["impute", "--model", str(d / "model"), "--data", str(d / "u.csv"), "--out", str(d / "v.csv"), "--uncertainty", "100000"]) == 2
    assert "not 100000" in capsys.readouterr().err and not (d / "v.csv").exists()


def test_impute_refuses_tampered_model_and_other_taxa(trained, capsys, tmp_path):
    d, data, _ = trained
    import shutil

    bad = tmp_path / "m"
    shutil.copytree(d / "model", bad)
    (bad / "taxa.json").write_text((bad / "taxa.json").read_text().replace("taxon_00", "taxon_XX"))
    assert main(["impute", "--model", str(bad), "--data", str(data), "--out", str(tmp_path / "o.csv")]) == 2
    assert "taxa.json" in capsys.readouterr().err and not (tmp_path / "o.csv").exists()
    other, _ = make_synthetic(n_samples=20, n_taxa=13, n_directed=2, n_symmetric=2)
    pd.DataFrame(other.counts, index=other.obs_names, columns=other.var_names).to_csv(tmp_path / "other.csv")
    assert main(["impute", "--model", str(d / "model"), "--data", str(tmp_path / "other.csv"), "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert "taxa do not match" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "o.csv").exists()


def test_train_rejects_bad_config_in_one_line(tmp_path, capsys):
    assert main(["train", str(Path(__file__).resolve().parents[3] / "studies/configs/tiny.yaml"), "--data", str(tmp_path / "x.h5ad"), "--out", str(tmp_path / "m"),
                 "--set", "hiden_dim=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'hiden_dim'" in err and len(err.strip().splitlines()) == 1


def test_a_wide_table_is_pointed_at_the_vae_options_it_needs():
    """Partners (raw values) from PARTNER_TAXA taxa, wide.yaml past WIDE_TAXA; a TCMA-width table and a config that
    already has what its width needs get none."""
    from dataclasses import replace

    from depmicro.core.cli.model import PARTNER_TAXA, WIDE_TAXA, wide_table_note
    from depmicro.core.model.config import load_config

    configs = Path(__file__).resolve().parents[3] / "studies" / "configs"
    small, wide = load_config(configs / "small.yaml"), load_config(configs / "wide.yaml")
    partners = replace(wide, vae_standardize=False)
    assert "wide.yaml (" in wide_table_note(1700, small) and "1700 taxa" in wide_table_note(1700, small)
    assert "wide.yaml (" in wide_table_note(WIDE_TAXA + 1, partners)  # past WIDE_TAXA partners alone are not enough
    assert "vae_standardize=false" in wide_table_note(PARTNER_TAXA, small)
    assert "vae_standardize=false" in wide_table_note(WIDE_TAXA, small)
    assert wide_table_note(PARTNER_TAXA - 1, small) is None and wide_table_note(106, small) is None
    assert wide_table_note(600, partners) is None
    assert "vae_standardize=false" in wide_table_note(600, wide)  # the standardized VAE trailed at 400 taxa
    assert wide_table_note(1700, wide) is None


def test_impute_refuses_metadata_a_model_was_trained_without(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DEPMICRO_CACHE", str(tmp_path / "cache"))
    ds, _ = make_synthetic(n_samples=40, n_taxa=8, n_directed=1, n_symmetric=1)
    pd.DataFrame(ds.counts, index=ds.obs_names, columns=ds.var_names).to_csv(tmp_path / "c.csv")
    args = ["train", str(REPO / "studies" / "configs" / "tiny.yaml"), "--data", str(tmp_path / "c.csv"), "--out", str(tmp_path / "m")]
    for kv in [*FAST, "use_metadata=false"]:
        args += ["--set", kv]
    assert main(args) == 0
    capsys.readouterr()
    pd.DataFrame({"sample_type": ["Primary Tumor"] * 40}, index=ds.obs_names).to_csv(tmp_path / "meta.csv")
    out = tmp_path / "f.csv"
    assert main(["impute", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "c.csv"), "--metadata",
                 str(tmp_path / "meta.csv"), "--out", str(out)]) == 2
    assert "trained without metadata" in capsys.readouterr().err and not out.exists()
    assert main(["impute", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "c.csv"), "--out", str(out)]) == 0
