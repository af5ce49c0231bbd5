"""The Ray Tune trainable: one trial trains one model on one (dataset, held-out seed).

Everything expensive and shared (data, splits, dependency statistics, trained VAE states) arrives
through `tune.with_parameters` from the driver, so a worker node needs neither the data files nor
a cache directory, and F/MI statistics and the VAE phase are computed once per (dataset, seed),
never per trial. A trial whose VAE settings the driver did not train (a search over a VAE field)
uses the cache directory lazily: the first trial with a key trains and stores it.

Checkpoints: every validated epoch reports its metrics with a checkpoint directory holding
`state/` (core fit's resumable state); a retried or resumed trial continues from it. The last
epoch's report is held back until fit() has returned, and goes out together with the test
metrics (one imputation with the best-validation model gives test_* and the per-microbe PCCs) in
a final checkpoint that also holds `best_model/` and `final.json`. Holding it back means ASHA sees
a finished trial's last epoch only once everything is in the result; a trial restored from a
final checkpoint re-reports it instead of training again (exactly once).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from depmicro.core.data.evaluation import METRICS, better, evaluate, per_microbe_pcc, protocol_matrix, training_view
from depmicro.core.model.bundle import save_model
from depmicro.core.model.config import ModelConfig, config_from_dict
from depmicro.core.train import fit
from depmicro.studies.checkpoints import restore_point
from depmicro.studies.inference import ARTIFACT as INFERENCE_ARTIFACT
from depmicro.studies.inference import label as inference_label
from depmicro.studies.inference import metric_key
from depmicro.studies.schema import ARTIFACT_PER_MICROBE
from depmicro.studies.spec import StudySpec, split_data_key

TRIAL_INDEX = "__trial_index__"  # set by ray.tune.search.Repeater (Optuna over several datasets/seeds)
FINAL_FILE = "final.json"
TRIAL_FILE = "trial.json"


@dataclass
class SharedData:
    """What every trial needs, built once on the driver and put in the object store once."""

    spec: StudySpec
    datasets: dict[str, Any]                      # dataset name -> core Dataset
    splits: dict[str, Any]                        # data key -> core Split
    dep_stats: dict[str, Any]                     # data key -> DepStats | None (None: no trial needs them)
    pretrain: dict[str, tuple] = field(default_factory=dict)  # dataset name -> pretraining Datasets
    vae: dict[str, Any] = field(default_factory=dict)  # vae_cache_key -> core VaeEntry, trained by the driver
    cache_dir: str | None = None  # the study's cache directory (lazy VAE entries; shared storage on a cluster)


@dataclass(frozen=True)
class TrialSetup:
    data_key: str
    dataset: str
    seed: int
    arm: str
    replicate: int
    config: ModelConfig  # the trial's full, validated model config (replicate r: seed + r)


def data_combos(spec: StudySpec) -> list[tuple[str, int]]:
    """(data key, replicate) pairs one suggested configuration is run on."""
    return [(k, r) for k in spec.data_keys for r in range(spec.replicates)]


_RESOLVED: dict[tuple[int, str], TrialSetup] = {}


def resolve_trial(spec: StudySpec, config: dict) -> TrialSetup:
    """Tune's flat trial config -> the trial's data, arm and full validated ModelConfig.

    Resolved once per (spec, trial config) in a process: the driver's callbacks (MLflow, progress)
    ask for every event of a trial and share the one result; a worker resolves its trial once."""
    memo = (id(spec), json.dumps(config, sort_keys=True, default=str))
    if memo not in _RESOLVED:
        _RESOLVED[memo] = _resolve(spec, config)
    return _RESOLVED[memo]


def _resolve(spec: StudySpec, config: dict) -> TrialSetup:
    if TRIAL_INDEX in config and "data" not in config:
        key, replicate = data_combos(spec)[int(config[TRIAL_INDEX]) % len(data_combos(spec))]
    else:
        key = config.get("data", spec.data_keys[0])
        replicate = int(config.get("replicate", 0))
    arm = config.get("arm", "search")
    overrides = dict(spec.base_config)
    if spec.inference:  # epochs validate with the default inference setting (what ASHA and the search see)
        overrides.update(spec.inference.default)
    overrides.update(spec.arms.get(arm, {}))
    overrides.update({k: v for k, v in config.items() if k in spec.search_space})
    overrides.update((config.get("point") or {}).get("config", {}))  # a confirmation trial: one of the search's best configurations
    cfg = config_from_dict(overrides)
    cfg = dataclasses.replace(cfg, seed=cfg.seed + replicate)
    dataset, seed = split_data_key(key)
    return TrialSetup(key, dataset, seed, arm, replicate, cfg)


def limit_threads(cpu: float) -> int:
    """As many intra-op threads as CPUs the trial was given (at least one): a trial that spreads over
    every core fights the other concurrent trials for them. OMP/MKL variables carry the limit to any
    process the trial starts; torch itself is told directly (its pool already exists)."""
    n = max(1, int(round(cpu)))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # only settable before the first parallel work in this process (a reused worker)
        pass
    return n


def _best_so_far(best: dict, val: dict) -> dict:
    for m in METRICS:
        v = val.get(m)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        key = f"best_val_{m}"
        if better(m, v, best.get(key)):
            best[key] = float(v)
    return best


@dataclass
class _Start:
    """Where a trial starts: fresh, or from a verified checkpoint (`resume_from`, the time and
    best-so-far scores it carries); `note` says a corrupt newest checkpoint was skipped."""

    dir: str | None = None
    note: str | None = None
    elapsed: float = 0.0
    best: dict = field(default_factory=dict)
    resume_from: Path | None = None


def train_trial(config: dict, shared: SharedData) -> None:
    """Function trainable (see the module docstring for the reporting and checkpoint contract)."""
    spec = shared.spec
    setup = resolve_trial(spec, config)
    cfg = setup.config
    limit_threads(spec.resources.cpu)
    node_id = ray.get_runtime_context().get_node_id()
    data = shared.datasets[setup.dataset]
    split = shared.splits[setup.data_key]
    pretrain = tuple(shared.pretrain.get(setup.dataset, ())) if cfg.vae_pretrain else ()
    t_start = time.time()
    start = _start(tune.get_checkpoint())
    if start is None:  # finished before: its final result went out again
        return
    pending: dict = {}  # the held-back last epoch: metrics and its checkpoint directory
    try:
        res = fit(cfg, data, split, pretrain=pretrain, dep_stats=shared.dep_stats.get(setup.data_key),
                  on_epoch=_epoch_reporter(cfg, start, pending, node_id, t_start), resume_from=start.resume_from,
                  vae_cache_dir=shared.cache_dir, vae_entries=shared.vae)
    finally:
        if start.dir:
            shutil.rmtree(start.dir, ignore_errors=True)
    _report_final(spec, cfg, data, split, res, pending, start, node_id, t_start)


def _start(ckpt) -> _Start | None:
    """The trial's starting point from Tune's checkpoint (verified first: a corrupt newest one falls
    back to the one before); None when that checkpoint is final: its result is reported again, not retrained."""
    if ckpt is None:
        return _Start()
    restore_dir, note = restore_point(ckpt)
    if restore_dir is None:
        return _Start(note=note)
    root = Path(restore_dir)
    if (root / FINAL_FILE).is_file():  # finished before the driver or worker died
        final = json.loads((root / FINAL_FILE).read_text())
        extra = {"checkpoint_fallback": note} if note else {}
        tune.report({**final["metrics"], **extra}, checkpoint=tune.Checkpoint.from_directory(restore_dir))
        shutil.rmtree(restore_dir, ignore_errors=True)
        return None
    info = json.loads((root / TRIAL_FILE).read_text())
    return _Start(restore_dir, note, float(info["elapsed"]), dict(info["best"]), root / "state")


def _epoch_reporter(cfg: ModelConfig, start: _Start, pending: dict, node_id: str, t_start: float):
    """fit's on_epoch hook: report each validated epoch with a checkpoint; hold the last one back in `pending`."""
    best = start.best

    def on_epoch(rep) -> None:
        if not rep.val:  # epochs without validation have nothing for the scheduler; no report
            return None
        _best_so_far(best, rep.val)
        metrics = {"epoch": rep.epoch, "train_loss": float(rep.train_loss), "epoch_seconds": float(rep.seconds),
                   **{f"val_{m}": float(rep.val[m]) for m in METRICS if m in rep.val}, **best, "node_id": node_id}
        if start.note and not pending.get("noted"):  # the first result after a fallback says so
            metrics["checkpoint_fallback"] = start.note
            pending["noted"] = True
        d = Path(tempfile.mkdtemp(prefix="depmicro-ckpt-"))
        rep.save_checkpoint(d / "state")
        (d / TRIAL_FILE).write_text(json.dumps({"elapsed": start.elapsed + time.time() - t_start, "best": best}))
        if rep.epoch >= (rep.total_epochs or cfg.epochs):
            pending.update(metrics=metrics, dir=d)
            return None
        try:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(d)))
        finally:
            shutil.rmtree(d, ignore_errors=True)
        return None

    return on_epoch


def _report_final(spec: StudySpec, cfg: ModelConfig, data, split, res, pending: dict, start: _Start, node_id: str,
                  t_start: float) -> None:
    """The last epoch's metrics with the test metrics (fit imputed once with the best-validation
    model and scored test from it), the inference table, the model and the per-microbe PCCs, in one
    final checkpoint."""
    Y = protocol_matrix(data.counts, split, cfg.protocol)
    per_test = per_microbe_pcc(Y, res.filled, split.test)
    per_val = per_microbe_pcc(Y, res.filled, split.val) if split.val.any() else np.full(Y.shape[1], np.nan)
    pending.pop("noted", None)
    d = pending.get("dir") or Path(tempfile.mkdtemp(prefix="depmicro-ckpt-"))
    metrics = dict(pending.get("metrics") or _last_metrics(res, start.best, node_id))
    metrics.update({f"test_{k}": (float(v) if k not in ("n_microbes", "n_heldout") else int(v)) for k, v in res.test.items()})
    metrics["seconds"] = start.elapsed + time.time() - t_start
    metrics["vae_seconds"] = float(res.vae_seconds)  # VAE training this trial paid (0: shipped, cached or resumed)
    metrics["vae_cached"] = int(res.vae_source in ("shared", "cache"))
    metrics.setdefault("best_val_pcc_per_microbe", float(res.val.get("pcc_per_microbe", float("nan"))) if res.val else float("nan"))
    if spec.inference:
        table = score_inference(spec, res.imputer, cfg, data, split, res.filled)
        for row in table:
            metrics.update({metric_key(row["label"], k): v for k, v in row["scores"].items()})
        (d / INFERENCE_ARTIFACT).write_text(json.dumps(table, indent=1))
    save_model(res.imputer, d / "best_model")
    nan_to_none = lambda a: [None if not np.isfinite(x) else float(x) for x in a]  # noqa: E731
    (d / ARTIFACT_PER_MICROBE).write_text(json.dumps({"var_names": list(data.var_names), "test": nan_to_none(per_test), "val": nan_to_none(per_val)}))
    (d / FINAL_FILE).write_text(json.dumps({"metrics": metrics}))
    try:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(d)))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def score_inference(spec: StudySpec, imputer, cfg: ModelConfig, data, split, default_filled: np.ndarray) -> list[dict]:
    """Every inference setting on the trial's best-validation model: one timed imputation each gives
    its validation and test scores and its seconds. The default setting's scores come from the
    imputation fit already scored (so they equal the trial's own val/test metrics); its seconds from
    its own timed run like every other setting."""
    Y = data.normalized
    view = training_view(Y, split)
    meta = data.metadata_text() if cfg.use_metadata else None
    rows = []
    try:
        for setting in spec.inference.settings():
            imputer.cfg = dataclasses.replace(cfg, **setting)
            torch.manual_seed(cfg.seed)
            t0 = time.perf_counter()
            filled = imputer.impute(view, split.observed, meta)
            seconds = time.perf_counter() - t0
            if all(getattr(cfg, k) == v for k, v in setting.items()):
                filled = default_filled
            val = evaluate(Y, filled, split.val) if split.val.any() else {}
            test = evaluate(Y, filled, split.test)
            scores = {**{f"val_{m}": float(val[m]) for m in METRICS if m in val},
                      **{f"test_{m}": float(test[m]) for m in METRICS}, "seconds": float(seconds)}
            rows.append({"label": inference_label(setting), "setting": setting, "scores": scores})
    finally:
        imputer.cfg = cfg  # the saved model keeps the configuration it was trained and validated with
    return rows


def _last_metrics(res, best: dict, node_id: str) -> dict:
    """Metrics of the last epoch when it was already reported (fit stopped early on patience)."""
    last = next((h for h in reversed(res.history) if h.get("val")), res.history[-1] if res.history else {})
    val = last.get("val") or {}
    return {"epoch": int(last.get("epoch", res.epochs)), "train_loss": float(last.get("train_loss", float("nan"))),
            "epoch_seconds": float(last.get("seconds", 0.0)), **{f"val_{m}": float(val[m]) for m in METRICS if m in val},
            **best, "node_id": node_id}
