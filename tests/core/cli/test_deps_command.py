"""`depmicro deps`: the matrices it writes match the library's, its counts match the matrices, and
bad input is one line with nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from depmicro.core.cli import main
from depmicro.core.data import load_dataset
from depmicro.core.data.synthetic import write_synthetic
from depmicro.core.deps.ksg import ksg_mutual_information


def test_cli_writes_matrices_counts_and_plots(tmp_path, capsys):
    data = write_synthetic(tmp_path / "syn.h5ad", seed=0)
    out = tmp_path / "deps.npz"
    assert main(["deps", str(data), "--order-by", "sample_type", "--f-threshold", "10", "--mi-threshold", "0.1",
                 "--out", str(out), "--plot", str(tmp_path / "figs"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    with np.load(out, allow_pickle=False) as z:
        assert {"f_stat", "f_pvalue", "mi", "dep", "var_names"} <= set(z.files)
        F, mi, dep = z["f_stat"], z["mi"], z["dep"]
        assert z["var_names"].dtype.kind == "U" and list(z["var_names"]) == [f"taxon_{k:02d}" for k in range(30)]
    off = ~np.eye(30, dtype=bool)
    assert res["directed_edges"] == int((F[off] > 10).sum())
    assert res["mi_edges"] == int((np.triu(mi, 1) > 0.1).sum())
    assert res["dep_edges"] == int(dep[off].sum()) and dep.diagonal().all()
    assert res["seconds"] > 0 and len(res["plots"]) == 2
    assert all(Path(p).stat().st_size > 1000 for p in res["plots"])


def test_cli_ksg_estimator(tmp_path, capsys):
    data = write_synthetic(tmp_path / "syn.h5ad", n_samples=60, seed=0)
    out = tmp_path / "deps.npz"
    assert main(["deps", str(data), "--mi-estimator", "ksg", "--mi-jitter-repeats", "2", "--seed", "3",
                 "--out", str(out), "--json"]) == 0
    json.loads(capsys.readouterr().out)
    with np.load(out, allow_pickle=False) as z:
        mi = z["mi"]
    expected = ksg_mutual_information(load_dataset(data).normalized, seed=3, repeats=2, device="cpu")
    np.testing.assert_allclose(mi, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("args, message", [
    (["--f-threshold", "-1"], "F threshold"),
    (["--mi-threshold", "abc"], "MI threshold"),
    (["--order-by", "nope"], "nope"),
    (["--mi-alpha", "0.05"], "permutations"),
    (["--permutations", "-3"], "permutations"),
    (["--lag", "0"], "lag"),
    (["--mi-estimator", "ksg", "--permutations", "5"], "binned"),
    (["--mi-jitter-repeats", "0"], "mi_jitter_repeats"),
    (["--plot", "__FILE__"], "not a directory"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, args, message):
    data = write_synthetic(tmp_path / "syn.h5ad", n_samples=40, seed=0)
    out = tmp_path / "deps.npz"
    args = [str(data) if a == "__FILE__" else a for a in args]
    try:
        code = main(["deps", str(data), "--out", str(out), *args])
    except SystemExit as exc:  # argparse rejects a bad value before the handler runs
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists() and not list(tmp_path.glob(".deps*"))
