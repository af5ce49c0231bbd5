"""Study files: the shipped ones parse, bad ones fail in one line before anything starts, and the
spec maps onto Tune the way the runner documents (no Ray processes here)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from depmicro.core.cli import main
from depmicro.core.errors import DepmicroError
from depmicro.core.model.config import config_from_dict
from depmicro.studies.spec import load_spec, spec_from_dict, spec_from_json
from tests.helpers import TCMA, tcma_path

REPO = Path(__file__).resolve().parents[2]
STUDIES = REPO / "studies"


def _quick() -> dict:
    raw = yaml.safe_load((STUDIES / "quickstart.yaml").read_text())
    raw["base_config"]["file"] = str(STUDIES / raw["base_config"]["file"])  # copies are written elsewhere
    return raw


def test_quickstart_parses_and_round_trips():
    spec = load_spec(STUDIES / "quickstart.yaml")
    assert spec.name == "quickstart" and spec.datasets[0].path == "synthetic"
    assert spec.search == "optuna" and spec.scheduler.type == "asha" and spec.n_trials() == 6
    assert {"ar_decay", "f_threshold", "mi_threshold", "dep_mask_mode", "sampling", "sampling_fraction", "lr"} <= set(spec.search_space)
    again = spec_from_json(spec.to_dict())
    assert again.to_dict() == spec.to_dict()


def test_paper_sweep_and_ablations_parse():
    tcma_path("stad")  # skips where the TCMA sets are absent (paths are checked when the file is read)
    sweep = load_spec(STUDIES / "paper_sweep.yaml")
    assert sweep.resources.gpu == 0.25 and sweep.search == "optuna"
    assert {d.name for d in sweep.datasets} == {"stad", "coad", "hnsc"}
    assert sweep.n_trials() == 40 * 3
    for d in sweep.datasets:  # leave-target-out pretraining
        assert len(d.pretrain) == 2 and all(Path(p).name.split(".")[0] != d.name for p in d.pretrain)
    assert Path(sweep.dataset("hnsc").metadata) == TCMA / "hnsc_metadata.tsv"

    abl = load_spec(STUDIES / "ablations.yaml")
    assert abl.search == "grid" and abl.scheduler.type == "none" and len(abl.seeds) >= 5
    arms = set(abl.arms)  # restrict, pretraining, metadata and decay 0.9 are the base: one arm for the four
    assert {"base", "dep_mask_mode=paper", "dep_mask_mode=off", "vae_pretrain=false", "use_metadata=false",
            "ar_decay=0.7", "ar_decay=0.8", "ar_decay=1.0", "vae_visible_weight=0.1"} == arms
    assert abl.n_trials() == len(arms) * 3 * len(abl.seeds)


def test_protocol_is_a_study_key_that_reaches_every_trial_config():
    from depmicro.studies.trainable import resolve_trial

    raw = _quick()
    raw["protocol"] = "renormalized"
    spec = spec_from_dict(raw)
    assert spec.protocol == "renormalized" and spec_from_json(spec.to_dict()).protocol == "renormalized"
    assert resolve_trial(spec, {"data": spec.data_keys[0], "arm": "search", "replicate": 0}).config.protocol == "renormalized"
    assert spec_from_dict(_quick()).protocol == "paper"


def test_ablations_small_has_the_same_factors_and_runs_the_base_once():
    tcma_path("stad")
    small, full = load_spec(STUDIES / "ablations_small.yaml"), load_spec(STUDIES / "ablations.yaml")
    assert small.ablate == full.ablate and set(small.arms) == set(full.arms)
    assert list(small.arms).count("base") == 1 and len(small.arms) == 9  # 13 values, 5 of them the base's
    assert small.seeds == [0, 1, 2, 3, 4] and {d.name for d in small.datasets} == {"stad", "coad", "hnsc"}
    assert small.n_trials() == 9 * 3 * 5
    # CPU-sized: small.yaml's model on a 300-step budget, against the GPU study's paper-sized model
    cpu, gpu = config_from_dict(small.base_config), config_from_dict(full.base_config)
    assert small.resources.gpu == 0 and cpu.train_steps == 300 and cpu.hidden_dim < gpu.hidden_dim


def test_tune_mapping_of_each_search_kind():
    from ray import tune

    from depmicro.studies.tuner import num_samples as _num_samples, param_space, scheduler as _scheduler, search_alg as _search_alg
    from depmicro.studies.trainable import TRIAL_INDEX, resolve_trial

    raw = _quick()
    raw["seeds"] = [0, 1]
    raw["replicates"] = 2
    spec = spec_from_dict(raw, base_dir=STUDIES)
    space = param_space(spec)
    assert "data" not in space and isinstance(space["lr"], tune.search.sample.Float)
    assert _num_samples(spec) == 6 * 4  # each Optuna suggestion runs on 2 seeds x 2 replicates
    alg = _search_alg(spec)
    assert type(alg).__name__ == "Repeater" and alg.repeat == 4
    s = resolve_trial(spec, {"lr": 1e-3, "ar_decay": 0.8, TRIAL_INDEX: 3})
    assert (s.data_key, s.replicate, s.config.seed, s.config.lr) == ("synthetic/s1", 1, 1, 1e-3)
    sched = _scheduler(spec)
    assert (sched._time_attr, sched._max_t, sched._stop_last_trials) == ("epoch", 12, False)

    raw = _quick()
    raw.pop("search_space")
    raw.pop("num_samples")
    raw.update(search="grid", seeds=[3, 4], scheduler="none", ablate={"dep_mask_mode": ["paper", "off"], "ar_decay": [0.7]})
    spec = spec_from_dict(raw, base_dir=STUDIES)
    space = param_space(spec)
    assert space["data"] == {"grid_search": ["synthetic/s3", "synthetic/s4"]}
    assert space["arm"] == {"grid_search": ["dep_mask_mode=paper", "dep_mask_mode=off", "ar_decay=0.7"]}
    assert spec.n_trials() == 6 and _scheduler(spec) is None
    s = resolve_trial(spec, {"data": "synthetic/s4", "arm": "dep_mask_mode=off"})
    assert (s.dataset, s.seed, s.arm, s.config.dep_mask_mode, s.config.ar_decay) == ("synthetic", 4, "dep_mask_mode=off", "off", 0.9)


def _bad_cases() -> dict[str, tuple[dict, str]]:
    def q(**over):
        raw = _quick()
        for k, v in over.items():
            if v is None:
                raw.pop(k, None)
            else:
                raw[k] = v
        return raw

    def bc(**over):
        raw = _quick()
        raw["base_config"].update(over)
        return raw

    def ss(**over):
        raw = _quick()
        raw["search_space"].update(over)
        return raw

    return {
        "unknown key": (q(num_trials=4), "unknown study key 'num_trials'"),
        "no name": (q(name=None), "'name' is required"),
        "bad name": (q(name="my study"), "study name must be"),
        "no datasets": (q(datasets=None), "'datasets' is required"),
        "missing data file": (q(datasets=["nope.h5ad"]), "no such file"),
        "unknown dataset key": (q(datasets=[{"path": "synthetic", "pretrian": []}]), "unknown key 'pretrian'"),
        "seeds not ints": (q(seeds=["a"]), "seeds entry must be an integer"),
        "duplicate seeds": (q(seeds=[1, 1]), "duplicate"),
        "ratios": (q(test_ratio=0.6, val_ratio=0.5), "sum < 1"),
        "base config unknown field": (bc(hiden_dim=3), "unknown config key 'hiden_dim'"),
        "base config bad value": (bc(ar_decay=1.5), "ar_decay must be in (0, 1]"),
        "missing base config file": (q(base_config="configs/nope.yaml"), "no such file"),
        "search key not a field": (ss(learning_rate={"type": "uniform", "low": 0.1, "high": 0.2}), "search_space.learning_rate: not a searchable ModelConfig field"),
        "search type": (ss(lr={"type": "normal", "low": 0, "high": 1}), "type must be one of"),
        "low above high": (ss(lr={"type": "loguniform", "low": 0.1, "high": 0.01}), "must be below high"),
        "loguniform at zero": (ss(lr={"type": "loguniform", "low": 0.0, "high": 0.01}), "loguniform needs low > 0"),
        "int bounds not ints": (ss(n_layers={"type": "int", "low": 1.5, "high": 3}), "must be an integer"),
        "choice value invalid": (ss(dep_mask_mode={"type": "choice", "values": ["paper", "sideways"]}), "value 'sideways'"),
        "unquoted off": (ss(dep_mask_mode={"type": "choice", "values": ["paper", False]}), 'quote it'),
        "uniform out of range": (ss(ar_decay={"type": "uniform", "low": 0.5, "high": 1.5}), "ar_decay must be in (0, 1]"),
        "combination invalid": (ss(hidden_dim={"type": "choice", "values": [64, 68]}, n_heads={"type": "choice", "values": [4, 8]}),
                                "hidden_dim=68, n_heads=8: config hidden_dim (68) must be divisible by n_heads (8)"),
        "test_ratio searched": (ss(test_ratio={"type": "uniform", "low": 0.1, "high": 0.2}), "set by the study"),
        "unknown protocol": (q(protocol="leaky"), "protocol must be one of paper, renormalized"),
        "protocol searched": (ss(protocol={"type": "choice", "values": ["paper", "renormalized"]}), "set by the study"),
        "grid with optuna": (ss(lr={"type": "grid", "values": [1e-3, 1e-4]}), "type grid needs search: grid or random"),
        "ablate with optuna": (q(ablate={"n_layers": [1, 2]}), "ablate needs search: grid"),
        "unknown search": (q(search="bayes"), "search algorithm must be one of"),
        "grid with uniform": (q(search="grid"), "search: grid takes only grid/choice entries"),
        "unknown scheduler": (q(scheduler="hyperband"), "scheduler type must be one of"),
        "grace above epochs": (q(scheduler={"type": "asha", "grace_period": 50}), "exceeds the epochs"),
        "num_samples zero": (q(num_samples=0), "num_samples must be >= 1"),
        "concurrency string": (q(max_concurrent_trials="2"), "max_concurrent_trials must be an integer"),
        "gpu fraction": (q(resources_per_trial={"cpu": 1, "gpu": 1.5}), "gpu must be a fraction"),
        "resources key": (q(resources_per_trial={"cpus": 1}), "unknown key 'cpus'"),
        "unknown metric": (q(metric="val_auc"), "metric must be one of"),
        "wrong mode": (q(metric="val_rmse", mode="max"), "would search for the worst models"),
        "baseline": (q(baselines=["svd"]), "baselines must be a list of mean, knn, iterative, missforest, softimpute"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_study_file_is_one_line_and_starts_nothing(case, tmp_path, capsys, monkeypatch):
    raw, expected = _bad_cases()[case]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.chdir(tmp_path)

    def started(*a, **k):
        raise AssertionError("the study file passed validation")

    monkeypatch.setattr("depmicro.studies.runner._execute", started)
    code = main(["study", "run", str(path)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and expected in err, err
    assert err.startswith("depmicro study run: error: ") and str(path) in err
    assert sorted(os.listdir(tmp_path)) == ["study.yaml"]  # no mlflow.db, no depmicro_results


def test_not_yaml_and_not_a_mapping(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert main(["study", "run", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    bad.write_text("- just\n- a list\n")
    assert main(["study", "run", str(bad)]) == 2
    assert "must be a mapping" in capsys.readouterr().err
    assert main(["study", "run", str(tmp_path / "absent.yaml")]) == 2
    assert "no such study file" in capsys.readouterr().err


def test_status_and_resume_of_unknown_study(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["study", "resume", "ghost", "--storage", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no study at" in err
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert main(["study", "status", "ghost", "--tracking-uri", uri, "--storage", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no study 'ghost'" in err


def test_relative_paths_resolve_against_the_study_file(tmp_path):
    from depmicro.core.data.synthetic import write_synthetic

    (tmp_path / "data").mkdir()
    (tmp_path / "cfg").mkdir()
    write_synthetic(tmp_path / "data" / "a.h5ad", n_samples=40, n_taxa=12, n_directed=2, n_symmetric=2)
    (tmp_path / "cfg" / "small.yaml").write_text("hidden_dim: 16\nn_heads: 2\n")
    raw = {"name": "rel", "datasets": ["data/a.h5ad"], "base_config": {"file": "cfg/small.yaml", "epochs": 2},
           "search": "random"}
    spec = spec_from_dict(raw, base_dir=tmp_path)
    assert spec.datasets[0].path == str(tmp_path / "data" / "a.h5ad") and spec.datasets[0].name == "a"
    assert spec.base_config["hidden_dim"] == 16 and spec.base_config["epochs"] == 2
    with pytest.raises(DepmicroError, match="no such file"):
        spec_from_dict(raw, base_dir=tmp_path / "cfg")


def test_relative_sqlite_uri_is_stored_absolute(tmp_path, monkeypatch):
    from depmicro.studies.schema import default_tracking_uri, normalize_tracking_uri

    monkeypatch.chdir(tmp_path)
    assert normalize_tracking_uri("sqlite:///sub/m.db") == f"sqlite:///{tmp_path / 'sub' / 'm.db'}"
    assert normalize_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert normalize_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"
    assert default_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_cloud_storage_uri_is_refused_in_one_line(capsys):
    code = main(["study", "resume", "x", "--storage", "s3://bucket/results"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cloud URIs are not supported" in err
