"""Hand-made MLflow stores with known paired differences, laid out as studies/schema.py defines them
(parent run with the flattened spec, one child run per trial with its config params and test
metrics), for the claims table and the noise notes. No model artifacts: analysis does not need them.

ablation: arms as studies.spec names them (the base arm once), datasets alpha (with metadata) and
beta (without), 5 seeds. Test pcc_per_microbe = BASE_PPM[seed] + EFFECT[arm][seed] (beta: the
metadata arm equals the base, as it does where a set has no metadata); rmse = 1 - pcc_per_microbe.

search: three configurations (lr) on one dataset at 4 held-out seeds whose seed-to-seed spread
(about 0.08) dwarfs the configurations' differences (0.002).
"""
from __future__ import annotations

from pathlib import Path

SEEDS = (0, 1, 2, 3, 4)
BASE_PPM = (0.40, 0.55, 0.48, 0.62, 0.45)
EFFECT = {  # arm -> per-seed difference from the base arm (arm minus base)
    "base": (0.0,) * 5,
    "vae_pretrain=false": (-0.10, -0.12, -0.08, -0.11, -0.09),      # pretraining helps: supported
    "use_metadata=false": (0.05, 0.06, 0.04, 0.05, 0.07),           # metadata hurts: opposite (alpha only)
    "dep_mask_mode=paper": (0.01, -0.01, 0.02, -0.02, 0.0),
    "dep_mask_mode=off": (0.002, -0.003, 0.001, 0.0, -0.001),       # neither mask mode beats off: not supported
    "ar_decay=0.7": (0.03, 0.031, 0.029, 0.03, 0.032),               # 0.7 beats 1.0 (1.0 = base)
    "ar_decay=0.8": (0.0, 0.01, -0.01, 0.005, -0.004),
}
BASE = {"vae_pretrain": True, "use_metadata": True, "dep_mask_mode": "restrict", "ar_decay": 1.0}


def ablation_ppm(arm: str, dataset: str, i: int) -> float:
    if dataset == "beta" and arm == "use_metadata=false":
        return BASE_PPM[i]
    return BASE_PPM[i] + EFFECT[arm][i]


def _log(root: Path, study: str, parent_params: dict[str, str], trials: list[tuple[str, str, int, dict, dict]]) -> str:
    """trials: (variant, dataset, seed, config overrides, metrics); returns the tracking URI."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from depmicro.core.model.config import ModelConfig, config_to_dict
    from depmicro.studies.schema import (FINISHED, KIND_STUDY, KIND_TRIAL, TAG_DATASET, TAG_KIND, TAG_PARENT, TAG_SEED,
                                         TAG_STATUS, TAG_STUDY, TAG_TRIAL_ID, TAG_VARIANT, experiment_name)

    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(experiment_name(study), artifact_location=(root / "art").resolve().as_uri())
    tags = {TAG_STUDY: study}
    parent = client.create_run(exp, run_name=study, tags={**tags, TAG_KIND: KIND_STUDY})
    client.log_batch(parent.info.run_id, params=[Param(k, v) for k, v in {"name": study, **parent_params}.items()])
    client.set_terminated(parent.info.run_id)
    for k, (variant, dataset, seed, over, metrics) in enumerate(trials):
        run = client.create_run(exp, tags={**tags, TAG_PARENT: parent.info.run_id, TAG_KIND: KIND_TRIAL,
                                           TAG_DATASET: dataset, TAG_SEED: str(seed), TAG_TRIAL_ID: f"t{k:03d}",
                                           TAG_VARIANT: variant, TAG_STATUS: FINISHED})
        cfg = {**config_to_dict(ModelConfig()), **over}
        client.log_batch(run.info.run_id, metrics=[Metric(m, float(v), 0, 0) for m, v in metrics.items()],
                         params=[Param(p, str(v)) for p, v in cfg.items()])
        client.set_terminated(run.info.run_id)
    return uri


def log_ablation(root: Path, study: str = "claims") -> str:
    params = {f"base_config.{k}": str(v) for k, v in BASE.items()}
    params.update({"datasets.0.name": "alpha", "datasets.0.metadata": "/data/alpha_meta.tsv",
                   "datasets.1.name": "beta", "datasets.1.metadata": "None"})
    trials = []
    for arm in EFFECT:
        over = dict(BASE)
        if arm != "base":
            k, v = arm.split("=")
            over[k] = {"true": True, "false": False}.get(v, float(v) if k == "ar_decay" else v)
        for dataset in ("alpha", "beta"):
            for i, seed in enumerate(SEEDS):
                ppm = ablation_ppm(arm, dataset, i)
                trials.append((arm, dataset, seed, {**over, "seed": seed},
                               {"test_pcc_per_microbe": ppm, "test_rmse": 1.0 - ppm, "test_pcc": ppm, "test_cos": ppm,
                                "test_mae": 1.0 - ppm, "best_val_pcc_per_microbe": ppm}))
    return _log(root, study, params, trials)


SEARCH_SEED_PPM = (0.40, 0.55, 0.48, 0.60)
SEARCH_LR = (1e-3, 2e-3, 3e-3)


def log_search(root: Path, study: str = "noisy") -> str:
    trials = []
    for j, lr in enumerate(SEARCH_LR):
        for seed, base in enumerate(SEARCH_SEED_PPM):
            ppm = base + 0.001 * j
            trials.append(("search", "gamma", seed, {"lr": lr, "seed": seed},
                           {"test_pcc_per_microbe": ppm, "test_rmse": 1.0 - ppm, "test_pcc": ppm, "test_cos": ppm,
                            "test_mae": 1.0 - ppm, "best_val_pcc_per_microbe": ppm}))
    return _log(root, study, {}, trials)
