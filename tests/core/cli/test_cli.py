"""The CLI's contract: JSON with the project's metric names, and bad input as one line + exit 2."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from depmicro.core.cli import main
from depmicro.core.data import load_dataset
from tests.helpers import REPO, tcma_path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_console_script_inspects_stad(capsys):
    proc = subprocess.run(
        [sys.executable, "-m", "depmicro.core.cli", "data", "inspect", str(tcma_path("stad")), "--json"],
        capture_output=True, text=True, check=True,
    )
    info = json.loads(proc.stdout)
    assert (info["n_samples"], info["n_taxa"], info["zero_fraction"], info["n_empty_samples"]) == (530, 106, 0.8761, 209)


def test_a_reader_that_leaves_early_is_no_traceback(tmp_path):
    """`depmicro data inspect X --json | head -1`: the pipe closes before the result is printed. The command has done
    its work; it exits 0 without Python's BrokenPipeError traceback."""
    table = tmp_path / "t.csv"
    table.write_text("sample,a,b\ns1,1,2\ns2,3,0\n")
    proc = subprocess.Popen([sys.executable, "-m", "depmicro.core.cli", "data", "inspect", str(table), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the only reader is gone before the interpreter has even imported the CLI
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_baseline_json_has_the_metric_names(capsys):
    code, out, _ = run(capsys, "baseline", str(tcma_path("stad")), "--method", "mean", "--seed", "1", "--json")
    assert code == 0
    res = json.loads(out)
    for key in ("pcc", "cos", "rmse", "mae", "pcc_per_microbe", "n_microbes", "n_heldout", "seconds"):
        assert key in res
    nonzero = int((load_dataset(tcma_path("stad")).counts > 0).sum())
    assert res["n_heldout"] == round(0.1 * nonzero)
    assert 0.6 < res["pcc"] < 0.95


def test_an_undefined_per_microbe_score_is_explained_in_one_line(capsys, tmp_path):
    """8 samples x 10 taxa hold out 4 entries: no microbe reaches 5, so pcc_per_microbe is null, and stderr says why."""
    rng = np.random.default_rng(0)

    def table(n: int) -> str:
        path = tmp_path / f"t{n}.csv"
        pd.DataFrame(rng.integers(1, 50, size=(n, 10)), index=[f"s{i}" for i in range(n)],
                     columns=[f"t{j}" for j in range(10)]).to_csv(path)
        return str(path)

    code, out, err = run(capsys, "baseline", table(8), "--method", "mean", "--json")
    res = json.loads(out)
    assert code == 0 and res["pcc_per_microbe"] is None and res["n_microbes"] == 0
    assert err.strip() == (f"note: test pcc_per_microbe is undefined: no microbe has 5 held-out entries ({res['n_heldout']} "
                           "held out in all); the table is too small or too sparse for this score")
    code, out, err = run(capsys, "baseline", table(100), "--method", "mean", "--json")
    assert code == 0 and json.loads(out)["n_microbes"] == 10 and err == ""  # a defined score gets no note


def test_baseline_protocols_share_the_masks_and_differ_in_scale(capsys):
    got = {}
    for protocol in ("paper", "renormalized"):
        code, out, _ = run(capsys, "baseline", str(tcma_path("stad")), "--method", "mean", "--protocol", protocol, "--json")
        assert code == 0
        got[protocol] = json.loads(out)
    assert got["renormalized"]["protocol"] == "renormalized"
    assert got["paper"]["n_heldout"] == got["renormalized"]["n_heldout"]
    assert got["paper"]["rmse"] != got["renormalized"]["rmse"]


def _bad_inputs(tmp):
    def w(name, data, mode="w"):
        p = tmp / name
        with open(p, mode) as f:
            f.write(data)
        return str(p)

    good = w("good.csv", "sample,t1,t2\na,1,2\nb,3,0\nc,0,5\n")
    return {
        "missing file": (["data", "inspect", str(tmp / "nope.csv")], "no such file"),
        "empty file": (["data", "inspect", w("empty.csv", "")], "empty"),
        "header only": (["data", "inspect", w("header.csv", "sample,t1,t2\n")], "no data rows"),
        "NaN cell": (["data", "inspect", w("nan.csv", "sample,t1,t2\na,1,NaN\nb,3,0\n")], "NaN"),
        "inf cell": (["data", "inspect", w("inf.csv", "sample,t1,t2\na,1,inf\nb,3,0\n")], "infinite"),
        "negative": (["data", "inspect", w("neg.csv", "sample,t1,t2\na,1,-2\nb,3,0\n")], "negative count"),
        "string cell": (["data", "inspect", w("str.csv", "sample,t1,t2\na,1,abc\nb,3,0\n")], "non-numeric cell 'abc'"),
        "duplicate sample ids": (["data", "inspect", w("dup.csv", "sample,t1,t2\na,1,2\na,3,0\n")], "duplicate sample id 'a'"),
        "duplicate taxa": (["data", "inspect", w("dupt.csv", "sample,t1,t1\na,1,2\nb,3,0\n")], "duplicate taxon"),
        "metadata not covering": (
            ["data", "inspect", good, "--metadata", w("meta.tsv", "id\tsample_type\na\tTumor\nb\tNormal\n")],
            "does not cover 1 of 3 samples",
        ),
        "corrupt h5ad": (["data", "inspect", w("bad.h5ad", b"\x00not hdf5" * 10, "wb")], "not a readable .h5ad"),
        "unknown format": (["data", "inspect", w("x.xlsx", "x")], "unknown format"),
        "unknown baseline": (["baseline", good, "--method", "svd"], "invalid choice"),
        "bad test ratio": (["baseline", good, "--method", "mean", "--test-ratio", "1.5"], "between 0 and 1"),
        "too sparse to hold out": (["baseline", w("zeros.csv", "sample,t1,t2\na,0,0\nb,0,0\n"), "--method", "mean"], "too few nonzero"),
        "zero max iter": (["baseline", good, "--method", "iterative", "--max-iter", "0"], "max_iter must be >= 1"),
        "bad memory cap": (["train", str(REPO / "studies" / "configs" / "tiny.yaml"), "--data", good, "--max-memory", "lots",
                            "--out", str(tmp / "model")], "max_memory must be a size"),
    }


BAD_CASES = [
    "missing file", "empty file", "header only", "NaN cell", "inf cell", "negative", "string cell",
    "duplicate sample ids", "duplicate taxa", "metadata not covering", "corrupt h5ad", "unknown format",
    "unknown baseline", "bad test ratio", "too sparse to hold out", "zero max iter", "bad memory cap",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_nonzero_and_writes_nothing(case, tmp_path, capsys):
    argv, expected = _bad_inputs(tmp_path)[case]
    before = set(os.listdir(tmp_path))
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert "Traceback" not in err and out == ""
    assert set(os.listdir(tmp_path)) == before


HELP_PROBE = """
import sys
from depmicro.core.cli import build_parser, tables
rows = [c for t in tables() for c in t]
for argv in [["--help"]] + [c.name.split() + ["--help"] for c in rows]:
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pass
print(",".join(m for m in ("torch", "ray", "mlflow", "matplotlib", "transformers", "sklearn") if m in sys.modules))
print(len(rows))
"""


def test_help_of_every_command_loads_no_heavy_library():
    """The COMMANDS tables hold handler names, not handlers: `--help` of every command (studies and
    analysis included) builds the parser without importing torch, Ray, MLflow or scikit-learn."""
    proc = subprocess.run([sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, check=True)
    heavy, n_rows = proc.stdout.strip().splitlines()[-2:]
    assert heavy == ""
    assert int(n_rows) == 12  # 6 core rows (group data + 5 commands), 4 study (group + 3), analyze, export


def test_every_table_row_names_a_handler_the_loader_finds():
    from depmicro.core.cli import load, tables

    rows = [c for t in tables() for c in t]
    names = {c.name for c in rows}
    assert {"data inspect", "baseline", "deps", "train", "impute", "study run", "study resume", "study status",
            "analyze", "export"} <= names
    for c in rows:
        if c.handler:
            assert callable(load(c.handler)), c.handler
        else:  # a group: at least one action under it
            assert any(n.startswith(c.name + " ") for n in names)


def test_analyze_handler_loads_no_torch():
    """Only `export` needs torch; `analyze` runs beside a live study (tests/studies/test_fault_paths.py)
    and should not pay for it."""
    probe = "import sys, depmicro.analysis.commands.analyze; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
