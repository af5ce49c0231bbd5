"""Every bad input of issue 11, through the CLI in a subprocess (as a user meets it): exit status 2,
exactly one `depmicro CMD: error: ...` line on stderr naming the problem, no traceback, and the
file system as it was (a snapshot of every path the case involves, before and after: names, types,
sizes, contents and modification times).

Cases are built by small functions of an `Env` (a fresh temporary directory with a count table, a
tiny model bundle, a tiny config, and the hand-logged MLflow study of tests/mlflow_study.py), so
each is independent and cheap: commands that would train or run a study must refuse before they
start, which is what these tests check.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from tests.conftest import small_study
from tests.mlflow_study import STUDY, counts_table, logged_study, tiny_model  # noqa: F401 (fixture)

RUN_CLI = "import sys; from depmicro.core.cli import main; sys.exit(main())"


def snapshot(root: Path) -> dict:
    """Every entry under `root` (symlinks not followed): type, size, mtime and content hash."""
    out = {}
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode)
            else:
                out[rel] = ("file", st.st_size, st.st_mtime_ns, st.st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@dataclass
class Env:
    tmp: Path
    bundle_src: Path
    study_uri: str

    def w(self, name: str, data: str | bytes) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            p.write_bytes(data)
        else:
            p.write_text(data)
        return p

    @property
    def csv(self) -> Path:
        p = self.tmp / "counts.csv"
        if not p.exists():
            counts_table(p)
        return p

    @property
    def cfg(self) -> Path:
        """A config that would train in seconds; no case here gets that far."""
        return self.w("tiny.yaml", "latent_dim: 2\nvae_hidden: 8\nhidden_dim: 8\nn_layers: 1\nn_heads: 2\n"
                                   "timesteps: 20\nsampling_fraction: 5\nuse_metadata: false\nepochs: 2\nvae_epochs: 2\n")

    def bundle(self, name: str = "model") -> Path:
        dst = self.tmp / name
        shutil.copytree(self.bundle_src, dst)
        return dst

    def rehash(self, bundle: Path) -> None:
        m = json.loads((bundle / "manifest.json").read_text())
        for rel in m["files"]:
            p = bundle / rel
            if p.is_file() and not p.is_symlink():
                m["files"][rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        (bundle / "manifest.json").write_text(json.dumps(m))

    def study(self, name: str = "bad", **top) -> Path:
        return small_study(self.tmp, name, epochs=2, num_samples=1, **top)

    def edit_study(self, path: Path, fn: Callable[[dict], None]) -> Path:
        spec = yaml.safe_load(path.read_text())
        fn(spec)
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    def state(self, name: str, edit: Callable[[dict], object] | None = None, raw: str | None = None) -> Path:
        """A study state file as `study run` writes it (from a real spec), then hand-edited."""
        from depmicro.studies.spec import load_spec

        storage = self.tmp / "results"
        (storage / name).mkdir(parents=True, exist_ok=True)
        if raw is None:
            state = {"spec": load_spec(self.study(name)).to_dict(), "tracking_uri": f"sqlite:///{self.tmp}/m.db",
                     "experiment_id": "1", "parent_run_id": "abc", "created": 0}
            if edit is not None:
                state = edit(state) or state
            raw = json.dumps(state)
        (storage / name / "depmicro_study.json").write_text(raw)
        return storage


def _model_cases() -> dict:
    def manifest_edit(fn):
        def setup(e: Env):
            b = e.bundle()
            m = json.loads((b / "manifest.json").read_text())
            fn(e, b, m)
            (b / "manifest.json").write_text(json.dumps(m))
            return ["impute", "--model", b, "--data", e.csv, "--out", e.tmp / "out.csv"]
        return setup

    def dotdot(e, b, m):
        outside = e.w("secret.txt", "not yours")
        m["files"]["../secret.txt"] = hashlib.sha256(outside.read_bytes()).hexdigest()

    def absolute(e, b, m):
        outside = e.w("secret.txt", "not yours")
        m["files"][str(outside)] = hashlib.sha256(outside.read_bytes()).hexdigest()

    def files_list(e, b, m):
        m["files"] = sorted(m["files"])

    def symlinked_weights(e: Env):
        b = e.bundle()
        outside = e.tmp / "elsewhere.safetensors"
        shutil.move(b / "model.safetensors", outside)
        (b / "model.safetensors").symlink_to(outside)  # same bytes, same hash: only the link is wrong
        return ["impute", "--model", b, "--data", e.csv, "--out", e.tmp / "out.csv"]

    def truncated_weights(e: Env):
        b = e.bundle()
        raw = (b / "model.safetensors").read_bytes()
        (b / "model.safetensors").write_bytes(raw[: len(raw) // 2])
        e.rehash(b)
        return ["impute", "--model", b, "--data", e.csv, "--out", e.tmp / "out.csv"]

    def string_in_normalization(e: Env):
        b = e.bundle()
        norm = json.loads((b / "normalization.json").read_text())
        norm["latent_mean"][0] = "abc"
        (b / "normalization.json").write_text(json.dumps(norm))
        e.rehash(b)
        return ["impute", "--model", b, "--data", e.csv, "--out", e.tmp / "out.csv"]

    def bad_taxa(e: Env):
        b = e.bundle()
        (b / "taxa.json").write_text(json.dumps({"n_taxa": "twelve", "var_names": []}))
        e.rehash(b)
        return ["impute", "--model", b, "--data", e.csv, "--out", e.tmp / "out.csv"]

    def manifest_not_json(e: Env):
        b = e.bundle()
        (b / "manifest.json").write_text("{not json")
        return ["impute", "--model", b, "--data", e.csv, "--out", e.tmp / "out.csv"]

    def impute_onto_input(e: Env):
        return ["impute", "--model", e.bundle(), "--data", e.csv, "--out", e.csv]

    def impute_into_bundle(e: Env):
        b = e.bundle()
        return ["impute", "--model", b, "--data", e.csv, "--out", b / "imputed.csv"]

    return {
        "manifest entry with ..": (manifest_edit(dotdot), "not a plain relative name"),
        "manifest entry absolute": (manifest_edit(absolute), "not a plain relative name"),
        "manifest files is a list": (manifest_edit(files_list), "'files' must map"),
        "manifest not JSON": (manifest_not_json, "unreadable manifest"),
        "symlinked model.safetensors": (symlinked_weights, "symlink"),
        "truncated safetensors, re-hashed": (truncated_weights, "unreadable safetensors"),
        "string in normalization.json": (string_in_normalization, "latent_mean must be a list of 2 numbers"),
        "taxa.json n_taxa not a number": (bad_taxa, "n_taxa must be an integer"),
        "impute --out = --data": (impute_onto_input, "is also an input"),
        "impute --out inside the bundle": (impute_into_bundle, "lies inside the input"),
    }


def _data_cases() -> dict:
    def gz(e: Env):
        return ["data", "inspect", e.w("bad.csv.gz", b"this is not gzip at all")]

    def truncated_gz(e: Env):
        import gzip

        raw = gzip.compress(e.csv.read_bytes())
        return ["data", "inspect", e.w("cut.csv.gz", raw[: len(raw) // 2])]

    def h5ad_duplicate_obs(e: Env):
        import anndata as ad

        a = ad.AnnData(X=np.array([[1.0, 2.0], [3.0, 4.0]]))
        a.obs_names = ["s1", "s1"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a.write_h5ad(e.tmp / "dup.h5ad")
        return ["data", "inspect", e.tmp / "dup.h5ad"]

    return {
        "corrupt .csv.gz": (gz, "not a readable gzip file"),
        "first data row longer than the header": (lambda e: ["data", "inspect", e.w("long.csv", "id,a,b\ns1,1,2,5\ns2,3\n")],
                                                  "rows are longer than the header"),
        ".h5ad with a duplicate sample id": (h5ad_duplicate_obs, "duplicate sample id 's1'"),
        "truncated .csv.gz": (truncated_gz, "not a readable"),
        "semicolon-separated .csv": (lambda e: ["data", "inspect", e.w("semi.csv", "id;a;b\ns1;1;2\ns2;3;4\n")],
                                     "separated by ';'"),
        "comma-separated .tsv": (lambda e: ["data", "inspect", e.w("c.tsv", "id,a,b\ns1,1,2\ns2,3,4\n")],
                                 "separated by ','"),
        "counts that overflow (1e308)": (lambda e: ["data", "inspect", e.w("big.csv", "id,a,b\ns1,1e308,1e308\ns2,3,4\n")],
                                         "overflows"),
        "baseline seed below 0": (lambda e: ["baseline", e.csv, "--method", "iterative", "--seed", "-1"], "from 0 to 4294967295"),
        "baseline seed past 32 bits": (lambda e: ["baseline", e.csv, "--method", "iterative", "--seed", str(2**64)], "from 0 to 4294967295"),
        "one-row table": (lambda e: ["baseline", e.w("row.csv", "id,a,b,c\ns1,1,2,3\n"), "--method", "mean"],
                          "at least 2 samples and 2 taxa"),
        "one-column table": (lambda e: ["baseline", e.w("col.csv", "id,a\ns1,1\ns2,3\ns3,4\n"), "--method", "knn"],
                             "at least 2 samples and 2 taxa"),
        "train on a one-row table": (lambda e: ["train", e.cfg, "--data", e.w("row.csv", "id,a,b,c\ns1,1,2,3\n"),
                                                "--out", e.tmp / "m"], "at least 2 samples"),
    }


def _config_cases() -> dict:
    return {
        "empty config": (lambda e: ["train", e.w("empty.yaml", "# nothing\n"), "--data", e.csv, "--out", e.tmp / "m"],
                         "is empty"),
        "binary config": (lambda e: ["train", e.w("bin.yaml", bytes(range(256))), "--data", e.csv, "--out", e.tmp / "m"],
                          "not a text file"),
        "non-UTF-8 config": (lambda e: ["train", e.w("latin.yaml", "epochs: 2 # caf\xe9\n".encode("latin-1")),
                                        "--data", e.csv, "--out", e.tmp / "m"], "not a UTF-8"),
        "alias bomb under epochs": (lambda e: ["train", e.w("bomb.yaml", _bomb("epochs")), "--data", e.csv,
                                               "--out", e.tmp / "m"], "aliases"),
        "config is a directory": (lambda e: ["train", (e.tmp / "cfgdir").mkdir() or e.tmp / "cfgdir", "--data", e.csv,
                                             "--out", e.tmp / "m"], "is a directory"),
        "a key written twice": (lambda e: ["train", e.w("twice.yaml", "lr: 0.001\nepochs: 2\nlr: 0.1\n"), "--data", e.csv,
                                           "--out", e.tmp / "m"], "key 'lr' appears twice"),
        "seed past 32 bits": (lambda e: ["train", e.w("seed.yaml", "seed: 99999999999999999999\n"), "--data", e.csv,
                                         "--out", e.tmp / "m"], "seed must be <= 4294967295"),
        "partner gate without partners": (lambda e: ["train", e.w("gate.yaml", "vae_partner_gate: true\n"), "--data",
                                                     e.csv, "--out", e.tmp / "m"], "needs vae_partners > 0"),
    }


def _bomb(key: str) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, (x, y) in enumerate(zip("bcdefghi", "abcdefgh")):
        lines.append(f"{x}: &{x} [*{y},*{y},*{y},*{y},*{y},*{y},*{y},*{y},*{y}]")
    lines.append(f"{key}: *i")
    return "\n".join(lines) + "\n"


def _out_cases() -> dict:
    def train_out_other_dir(e: Env):
        e.w("mine/thesis.tex", "years of work")
        return ["train", e.cfg, "--data", e.csv, "--out", e.tmp / "mine"]

    def train_out_holding_input(e: Env):
        data = e.w("proj/data.csv", e.csv.read_text())
        return ["train", e.cfg, "--data", data, "--out", e.tmp / "proj"]

    def export_out_other_dir(e: Env):
        e.w("keep/notes.txt", "mine")
        return ["export", STUDY, "--tracking-uri", e.study_uri, "--out", e.tmp / "keep"]

    def export_out_report_dir(e: Env):
        e.w("rep/manifest.json", json.dumps({"format": "depmicro-bundle/1", "kind": "report", "files": {}}))
        return ["export", STUDY, "--tracking-uri", e.study_uri, "--out", e.tmp / "rep"]

    def analyze_out_other_dir(e: Env):
        e.w("docs/index.html", "<p>mine</p>")
        return ["analyze", STUDY, "--tracking-uri", e.study_uri, "--out", e.tmp / "docs"]

    def analyze_out_bundle(e: Env):
        return ["analyze", STUDY, "--tracking-uri", e.study_uri, "--out", e.bundle()]

    def deps_plot_other_dir(e: Env):
        e.w("figs/paper.png", b"\x89PNG not really")
        return ["deps", e.csv, "--out", e.tmp / "d.npz", "--plot", e.tmp / "figs"]

    return {
        "train --out a directory it did not write": (train_out_other_dir, "not a depmicro directory"),
        "train --out .": (lambda e: ["train", e.cfg, "--data", e.csv, "--out", "."], "working directory"),
        "train --out ..": (lambda e: ["train", e.cfg, "--data", e.csv, "--out", ".."], "working directory"),
        "train --out holding the input": (train_out_holding_input, "holds the input"),
        "train --out an existing file": (lambda e: ["train", e.cfg, "--data", e.csv, "--out", e.w("f.txt", "x")],
                                         "exists and is not a directory"),
        "export --out a directory it did not write": (export_out_other_dir, "not a depmicro directory"),
        "export --out a report directory": (export_out_report_dir, "depmicro report directory, not a model one"),
        "export --out .": (lambda e: ["export", STUDY, "--tracking-uri", e.study_uri, "--out", "."], "working directory"),
        "analyze --out a directory it did not write": (analyze_out_other_dir, "not a depmicro directory"),
        "analyze --out a model bundle": (analyze_out_bundle, "depmicro model directory, not a report one"),
        "analyze --out .": (lambda e: ["analyze", STUDY, "--tracking-uri", e.study_uri, "--out", "."], "working directory"),
        "analyze --out an existing file": (lambda e: ["analyze", STUDY, "--tracking-uri", e.study_uri, "--out",
                                                      e.w("report.txt", "x")], "exists and is not a directory"),
        "analyze --reference nosuch": (lambda e: ["analyze", STUDY, "--tracking-uri", e.study_uri, "--out",
                                                  e.tmp / "rev", "--reference", "nosuch"], "no arm 'nosuch'"),
        "analyze --tracking-uri bogus://x": (lambda e: ["analyze", STUDY, "--tracking-uri", "bogus://x", "--out",
                                                        e.tmp / "rev"], "not a tracking URI"),
        "deps --plot a directory it did not write": (deps_plot_other_dir, "not a depmicro directory"),
        "deps --out the input": (lambda e: ["deps", e.csv, "--out", e.csv], "is also an input"),
        "deps --out .": (lambda e: ["deps", e.csv, "--out", "."], "working directory"),
        "deps --device this torch does not have": (lambda e: ["deps", e.csv, "--device", "cuda:99"],
                                                   "torch device 'cuda:99' is not available here"),
    }


def _study_cases() -> dict:
    def space(field: str, dist: dict):
        return lambda e: ["study", "run", e.edit_study(e.study(), lambda s: s["search_space"].update({field: dist}))]

    def synthetic(settings: dict):
        return lambda e: ["study", "run", e.study(synthetic=settings)]

    def dataset(path_fn: Callable[[Env], str]):
        return lambda e: ["study", "run", e.edit_study(e.study(), lambda s: s.update(datasets=[path_fn(e)]))]

    def base_file(data: str | bytes):
        return lambda e: ["study", "run", e.edit_study(e.study(), lambda s: s["base_config"].update(file=str(e.w("base.yaml", data))))]

    def top(key: str, text: str):
        return lambda e: ["study", "run", e.w("top.yaml", e.study().read_text() + text)]

    def locked(e: Env):
        from depmicro.studies.state import study_lock

        path = e.study("locked")
        ctx = study_lock(e.tmp / "results", "locked")
        ctx.__enter__()
        e.held = ctx  # released by the test after the command ran
        return ["study", "run", path, "--storage", e.tmp / "results", "--tracking-uri", f"sqlite:///{e.tmp}/m.db"]

    def status_state(**kw):
        return lambda e: ["study", "status", "qq", "--storage", e.state("qq", **kw)]

    def resume_state(**kw):
        return lambda e: ["study", "resume", "qq", "--storage", e.state("qq", **kw)]

    def rel_dataset(state):
        state["spec"]["datasets"][0]["path"] = "../../etc/data.csv"

    def renamed(state):
        state["spec"]["name"] = "other"

    def seeds_text(state):
        state["spec"]["seeds"] = "zero"

    def no_uri(state):
        del state["tracking_uri"]

    def bad_space(state):
        state["spec"]["search_space"]["lr"] = {"type": "loguniform", "low": -1, "high": 1}

    def data_changed(state):
        state["provenance"] = {"data": {"/nowhere/counts.csv": "0" * 64}, "git_commit": "abc", "versions": {}}

    def resume_elsewhere(e: Env):
        return ["study", "resume", "qq", "--storage", e.state("qq"), "--tracking-uri", f"sqlite:///{e.tmp}/other.db"]

    return {
        "n_heads int 4..8 against hidden_dim 64": (space("n_heads", {"type": "int", "low": 4, "high": 8}),
                                                   "must be divisible by n_heads (5)"),
        "uniform for an integer field": (space("hidden_dim", {"type": "uniform", "low": 16, "high": 64}),
                                         "integer field"),
        "uniform for a boolean field": (space("use_metadata", {"type": "uniform", "low": 0, "high": 1}),
                                        "true/false field"),
        "int range crossing timesteps": (space("sampling_fraction", {"type": "int", "low": 100, "high": 300}),
                                         "exceeds timesteps"),
        "mask seed past 32 bits": (lambda e: ["study", "run", e.edit_study(e.study(), lambda s: s.update(seeds=[2**64]))],
                                   "seeds entry must be <= 4294967295"),
        "search seed past 32 bits": (lambda e: ["study", "run", e.edit_study(e.study(), lambda s: s.update(
            search={"algorithm": "optuna", "seed": 2**40}))], "search.seed must be <= 4294967295"),
        "synthetic n_samples too small": (synthetic({"n_samples": 5}), "n_samples must be >= 10"),
        "synthetic unknown key": (synthetic({"n_sample": 50}), "unknown key 'n_sample'"),
        "synthetic too many planted pairs": (synthetic({"n_taxa": 8}), "cannot hold 12 disjoint planted pairs"),
        "synthetic n_taxa not an integer": (synthetic({"n_taxa": "30"}), "n_taxa must be an integer"),
        "dataset path is a directory": (dataset(lambda e: str((e.tmp / "ddir").mkdir() or e.tmp / "ddir")),
                                        "is a directory"),
        "dataset not a readable table": (dataset(lambda e: str(e.w("g.h5ad", b"not hdf5"))), "not a readable .h5ad"),
        "dataset with ';' separators": (dataset(lambda e: str(e.w("s.csv", "id;a;b\ns1;1;2\n"))), "separated by ';'"),
        "binary base_config.file": (base_file(b"\x00\x01\x02\xff"), "not a text file"),
        "empty base_config.file": (base_file(""), "is empty"),
        "alias bomb under description": (top("description", ""), None),  # replaced below
        "alias bomb under num_samples": (None, None),  # replaced below
        "study file is binary": (lambda e: ["study", "run", e.w("b.yaml", b"\x89PNG\x00\x00")], "not a text file"),
        "--tracking-uri bogus://x": (lambda e: ["study", "run", e.study(), "--tracking-uri", "bogus://x"],
                                     "not a tracking URI"),
        "status --tracking-uri bogus://x": (lambda e: ["study", "status", "x", "--tracking-uri", "bogus://x"],
                                            "not a tracking URI"),
        "second driver of the same study": (locked, "already being run"),
        "status name with ..": (lambda e: ["study", "status", "..", "--storage", e.tmp / "results"], "no path separators"),
        "resume name with a separator": (lambda e: ["study", "resume", "../etc", "--storage", e.tmp / "results"],
                                         "no path separators"),
        "status, state not JSON": (status_state(raw="{half"), "unreadable study state"),
        "resume, state not JSON": (resume_state(raw="{half"), "unreadable study state"),
        "resume, data changed since the start": (resume_state(edit=data_changed), "changed since the study started"),
        "resume, tracked elsewhere": (resume_elsewhere, "resume it there"),
        "resume, state a list": (resume_state(raw="[1, 2]"), "not a JSON object"),
        "resume, state without tracking_uri": (resume_state(edit=no_uri), "'tracking_uri' missing"),
        "resume, state for another study": (resume_state(edit=renamed), "describes study 'other'"),
        "resume, relative dataset path in state": (resume_state(edit=rel_dataset), "absolute paths"),
        "resume, seeds hand-edited to text": (resume_state(edit=seeds_text), "seeds must be"),
        "status, search space hand-edited": (status_state(edit=bad_space), "loguniform needs low > 0"),
    }


def _alias_study(key: str):
    def setup(e: Env):
        text = e.study().read_text()
        spec = yaml.safe_load(text)
        spec.pop(key, None)
        body = yaml.safe_dump(spec, sort_keys=False)
        return ["study", "run", e.w(f"bomb_{key}.yaml", body + _bomb(key))]
    return setup


def _all_cases() -> dict:
    cases = {**_data_cases(), **_config_cases(), **_model_cases(), **_out_cases(), **_study_cases()}
    cases["alias bomb under description"] = (_alias_study("description"), "aliases")
    cases["alias bomb under num_samples"] = (_alias_study("num_samples"), "aliases")
    return cases


CASES = _all_cases()


@pytest.fixture(scope="module")
def bundle_src(tmp_path_factory) -> Path:
    from depmicro.core.model.bundle import save_model

    d = tmp_path_factory.mktemp("bundle") / "model"
    save_model(tiny_model(1, 0.9), d)
    return d


def run_cli(args: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN_CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def check_refused(args: list, cwd: Path, expected: str, roots: list[Path]) -> str:
    before = {str(r): snapshot(r) for r in roots}
    p = run_cli(args, cwd)
    lines = p.stderr.strip().splitlines()
    cmd = f"{args[0]} {args[1]}" if args[0] in ("data", "study") else str(args[0])
    assert p.returncode == 2, f"exit {p.returncode}\n{p.stderr[-3000:]}"
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(f"depmicro {cmd}: error: "), lines[0]
    assert expected in lines[0], lines[0]
    assert p.stdout == ""
    after = {str(r): snapshot(r) for r in roots}
    assert after == before, "the file system changed"
    return lines[0]


def release_held(env: Env) -> None:
    """A case that holds a study's lock (`locked`) keeps it until the command has run."""
    held = getattr(env, "held", None)
    if held is not None:
        held.__exit__(None, None, None)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_in_one_line(case, tmp_path, bundle_src, logged_study):  # noqa: F811
    setup, expected = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    env = Env(tmp=work, bundle_src=bundle_src, study_uri=logged_study["tracking_uri"])
    args = setup(env)
    roots = [tmp_path, Path(logged_study["root"])]
    try:
        check_refused(args, work, expected, roots)
    finally:
        release_held(env)


# Refused by the commands' checks, before the handler's module loads (core/cli/model_checks.py, studies/cli.py,
# analysis/cli.py): a typo costs a second, not the import of torch, Ray or MLflow.
LIGHT_CASES = ["empty config", "train --out .", "manifest not JSON", "impute --out = --data", "status, state not JSON",
               "resume, state for another study", "export --out .", "analyze --out .", "second driver of the same study",
               "resume, data changed since the start"]
HEAVY = ("torch", "ray", "mlflow")
RUN_CLI_REPORTING_IMPORTS = ("import json, sys; from depmicro.core.cli import main; code = main(sys.argv[1:]); "
                             f"print(json.dumps([code, sorted(m for m in {HEAVY!r} if m in sys.modules)]))")


@pytest.mark.parametrize("case", LIGHT_CASES)
def test_refused_before_torch_ray_or_mlflow_load(case, tmp_path, bundle_src, logged_study):  # noqa: F811
    setup, expected = CASES[case]
    env = Env(tmp=tmp_path, bundle_src=bundle_src, study_uri=logged_study["tracking_uri"])
    try:
        p = subprocess.run([sys.executable, "-c", RUN_CLI_REPORTING_IMPORTS, *map(str, setup(env))], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    finally:
        release_held(env)
    assert expected in p.stderr, p.stderr[-3000:]
    assert json.loads(p.stdout) == [2, []]


# --- read-only and full targets -------------------------------------------------------------------

def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0


@pytest.fixture(params=["read-only", "full"])
def unwritable(request, tmp_path):
    """A folder that refuses writes: a read-only or a full tmpfs (root), else chmod 555 (others)."""
    d = tmp_path / "target"
    mounted = _mount_tmpfs(d, "ro,size=1m" if request.param == "read-only" else "size=64k")
    try:
        if request.param == "read-only" and not mounted:
            d.chmod(0o555)
            if os.access(d, os.W_OK):
                pytest.skip("cannot make a read-only folder here (root without mount)")
        if request.param == "full":
            if not mounted:
                pytest.skip("a full file system needs `mount -t tmpfs` (root); skipped")
            fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, b"\0" * 4096):
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
        yield d
    finally:
        if mounted:
            subprocess.run(["umount", str(d)], capture_output=True)
        else:
            d.chmod(0o755)


WRITE_CASES = {
    "deps --out": lambda e, d: ["deps", e.csv, "--out", d / "deps.npz"],
    "deps --plot": lambda e, d: ["deps", e.csv, "--out", e.tmp / "deps.npz", "--plot", d / "figs"],
    "train --out": lambda e, d: ["train", e.cfg, "--data", e.csv, "--out", d / "model"],
    "impute --out": lambda e, d: ["impute", "--model", e.bundle(), "--data", e.csv, "--out", d / "imputed.csv"],
    "export --out": lambda e, d: ["export", STUDY, "--tracking-uri", e.study_uri, "--out", d / "best"],
    "analyze --out": lambda e, d: ["analyze", STUDY, "--tracking-uri", e.study_uri, "--out", d / "review"],
}


@pytest.mark.parametrize("case", list(WRITE_CASES))
def test_unwritable_out_is_refused_before_work(case, unwritable, tmp_path, bundle_src, logged_study):  # noqa: F811
    work = tmp_path / "work"
    work.mkdir()
    env = Env(tmp=work, bundle_src=bundle_src, study_uri=logged_study["tracking_uri"])
    args = WRITE_CASES[case](env, unwritable)
    line = check_refused(args, work, "cannot write to", [work, unwritable, Path(logged_study["root"])])
    assert str(unwritable) in line

