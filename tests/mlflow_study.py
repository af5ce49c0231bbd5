"""A small study logged to MLflow exactly as studies/schema.py lays it out, with test metrics chosen
by hand, so analysis tests can check the numbers it reports against numbers known in advance.

3 arms (ar_decay 0.5 / 0.7 / 0.9) x 2 datasets x 3 seeds of finished trials, a `mean` baseline on
every dataset and seed, one ASHA-stopped and one failed trial (both must stay out of the tables).
Every finished trial carries a real (tiny, untrained) model/ artifact written by
core/model/bundle.py's save_model, with its own weights, and a per_microbe_pcc.json artifact.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

STUDY = "unit"
DATASETS = ("alpha", "beta")
SEEDS = (0, 1, 2)
ARMS = ("ar_decay=0.5", "ar_decay=0.7", "ar_decay=0.9")
REFERENCE = "ar_decay=0.9"
# test pcc_per_microbe per (arm, dataset) over seeds 0, 1, 2
PPM = {
    ("ar_decay=0.9", "alpha"): [0.60, 0.62, 0.64],
    ("ar_decay=0.7", "alpha"): [0.50, 0.42, 0.34],   # reference minus 0.1, 0.2, 0.3
    ("ar_decay=0.5", "alpha"): [0.30, 0.32, 0.31],
    ("ar_decay=0.9", "beta"): [0.70, 0.71, 0.75],
    ("ar_decay=0.7", "beta"): [0.69, 0.72, 0.70],
    ("ar_decay=0.5", "beta"): [0.40, 0.45, 0.41],
    ("mean (baseline)", "alpha"): [0.20, 0.25, 0.30],
    ("mean (baseline)", "beta"): [0.10, 0.12, 0.17],
}
BEST_VAL = ("ar_decay=0.7", "beta", 1)  # the trial export must pick (highest best_val_pcc_per_microbe)
N_TAXA = 12
TAXA = [f"taxon_{j}" for j in range(N_TAXA)]


def other_metrics(ppm: float) -> dict[str, float]:
    """Every metric follows from pcc_per_microbe, so the best arm is best on all of them."""
    return {"pcc": ppm + 0.1, "cos": ppm + 0.2, "rmse": 1.0 - ppm, "mae": 0.8 - ppm}


def tiny_config(seed: int, ar_decay: float):
    from depmicro.core.model.config import config_from_dict

    return config_from_dict({"latent_dim": 2, "vae_hidden": 8, "hidden_dim": 8, "n_layers": 1, "n_heads": 2,
                             "timesteps": 20, "sampling_fraction": 5, "use_metadata": False, "seed": seed,
                             "ar_decay": ar_decay, "epochs": 2, "infer_ar_steps": 2})


def tiny_model(seed: int, ar_decay: float):
    from depmicro.core.model.imputer import DepMicroDiffImputer

    rng = np.random.default_rng(seed)
    dep = rng.random((N_TAXA, N_TAXA)) < 0.3
    np.fill_diagonal(dep, True)
    return DepMicroDiffImputer(tiny_config(seed, ar_decay), N_TAXA, TAXA, 0, dep=dep, rank=rng.permutation(N_TAXA))


def counts_table(path: Path, n: int = 40, seed: int = 7) -> Path:
    """A sparse samples x taxa count CSV shaped like the TCMA tables."""
    rng = np.random.default_rng(seed)
    X = rng.negative_binomial(2, 0.05, size=(n, N_TAXA)) * (rng.random((n, N_TAXA)) < 0.6)
    X[:, 0] += 1
    lines = ["sample," + ",".join(TAXA)] + [f"s{i}," + ",".join(str(int(v)) for v in row) for i, row in enumerate(X)]
    path.write_text("\n".join(lines) + "\n")
    return path


def log_study(root: Path) -> dict:
    """Log the study under `root` (sqlite store + artifacts); idempotent per root."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from depmicro.core.model.bundle import save_model
    from depmicro.core.model.config import config_to_dict

    root = Path(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    info = {"study": STUDY, "tracking_uri": uri, "root": root, "runs": {}}
    if (root / "done").exists():
        info.update(json.loads((root / "done").read_text()))
        return info
    root.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    exp = client.create_experiment(f"depmicro-{STUDY}", artifact_location=(root / "mlartifacts").resolve().as_uri())
    tags = {"depmicro.study": STUDY, "depmicro.git_commit": "abc1234"}
    parent = client.create_run(exp, run_name=STUDY, tags={**tags, "depmicro.kind": "study"})
    client.log_param(parent.info.run_id, "name", STUDY)
    client.set_terminated(parent.info.run_id)
    runs: dict[str, str] = {}
    models = root / "models"
    k = 0

    def child(kind: str, dataset: str, seed: int, extra: dict) -> str:
        r = client.create_run(exp, tags={**tags, "mlflow.parentRunId": parent.info.run_id, "depmicro.kind": kind,
                                         "depmicro.dataset": dataset, "depmicro.seed": str(seed), **extra})
        return r.info.run_id

    def per_microbe(rid: str, ppm: float, seed: int) -> None:
        rng = np.random.default_rng(seed + int(ppm * 1000))
        test = [None if j == 3 else float(np.clip(ppm + rng.normal(0, 0.1), -1, 1)) for j in range(N_TAXA)]
        d = root / "pm" / rid
        d.mkdir(parents=True)
        (d / "per_microbe_pcc.json").write_text(json.dumps({"var_names": TAXA, "test": test, "val": test}))
        client.log_artifact(rid, str(d / "per_microbe_pcc.json"))

    for arm in ARMS:
        decay = float(arm.split("=")[1])
        for dataset in DATASETS:
            for i, seed in enumerate(SEEDS):
                k += 1
                tid = f"trial_{k:03d}"
                rid = child("trial", dataset, seed, {"depmicro.trial_id": tid, "depmicro.variant": arm,
                                                     "depmicro.status": "TERMINATED"})
                cfg = tiny_config(100 + k, decay)
                ppm = PPM[(arm, dataset)][i]
                best_val = 0.91 if (arm, dataset, seed) == BEST_VAL else round(0.5 + 0.01 * k, 4)
                ms = []
                for step, scale in ((1, 0.5), (2, 1.0)):  # epoch 2 is the best epoch
                    for m, v in {"pcc_per_microbe": best_val * scale, **other_metrics(best_val * scale)}.items():
                        ms.append(Metric(f"val_{m}", v, 0, step))
                    ms += [Metric("train_loss", 1.0 / step, 0, step), Metric("epoch_seconds", 0.1, 0, step)]
                final = {"best_val_pcc_per_microbe": best_val, "test_n_microbes": N_TAXA - 1, "test_n_heldout": 50,
                         "seconds": 1.5, **{f"test_{m}": v for m, v in {"pcc_per_microbe": ppm, **other_metrics(ppm)}.items()}}
                ms += [Metric(key, v, 0, 0) for key, v in final.items()]
                client.log_batch(rid, metrics=ms, params=[Param(key, str(v)) for key, v in config_to_dict(cfg).items()])
                client.log_text(rid, json.dumps(config_to_dict(cfg)), "config.json")
                save_model(tiny_model(100 + k, decay), models / tid)
                client.log_artifacts(rid, str(models / tid), "model")
                per_microbe(rid, ppm, seed)
                client.set_terminated(rid)
                runs[f"{arm}|{dataset}|{seed}"] = rid
    for dataset in DATASETS:
        for i, seed in enumerate(SEEDS):
            rid = child("baseline", dataset, seed, {"depmicro.method": "mean"})
            ppm = PPM[("mean (baseline)", dataset)][i]
            client.log_batch(rid, metrics=[Metric(f"test_{m}", v, 0, 0) for m, v in {"pcc_per_microbe": ppm, **other_metrics(ppm)}.items()])
            per_microbe(rid, ppm, seed)
            client.set_terminated(rid)
    # an ASHA-stopped trial (val metrics only, excellent ones) and a failed trial
    rid = child("trial", "alpha", 3, {"depmicro.trial_id": "trial_stopped", "depmicro.variant": REFERENCE,
                                       "depmicro.status": "STOPPED"})
    client.log_batch(rid, metrics=[Metric("val_pcc_per_microbe", 0.99, 0, 1), Metric("best_val_pcc_per_microbe", 0.99, 0, 0)],
                     params=[Param(key, str(v)) for key, v in config_to_dict(tiny_config(999, 0.9)).items()])
    client.set_terminated(rid, "KILLED")
    rid = child("trial", "beta", 3, {"depmicro.trial_id": "trial_error", "depmicro.variant": REFERENCE,
                                      "depmicro.status": "ERROR"})
    client.set_terminated(rid, "FAILED")
    (root / "done").write_text(json.dumps({"runs": runs}))
    info["runs"] = runs
    return info


@pytest.fixture(scope="session")
def logged_study(tmp_path_factory) -> dict:
    """Import into a test module to use; built once per session (log_study is idempotent per root)."""
    return log_study(tmp_path_factory.getbasetemp() / "analysis_study")
