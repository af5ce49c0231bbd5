"""Study files: what a researcher writes, validated before any Ray process starts.

A mistake in a study file should cost a second, not a cluster start-up; so every key, type, path
and search-space bound is checked here and reported as one line naming the file and the key.
Paths are resolved relative to the study file, so a study runs from any working directory.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depmicro.core.data.baselines import BASELINES
from depmicro.core.data.evaluation import METRICS, PROTOCOLS, direction
from depmicro.core.errors import DepmicroError
from depmicro.core.io.safe_yaml import load_yaml
from depmicro.core.model.config import SEED_MAX, ModelConfig, config_from_dict, config_to_dict
from depmicro.studies.confirm import ConfirmSpec, parse_confirm
from depmicro.studies.datasets import SYNTHETIC, DatasetSpec, data_key, parse_datasets, split_data_key
from depmicro.studies.fields import NAME, Resources, SchedulerSpec, check_name, duration, int_list, integer, number
from depmicro.studies.fields import path as resolve_path
from depmicro.studies.fields import resources as parse_resources
from depmicro.studies.fields import scheduler as parse_scheduler
from depmicro.studies.inference import InferenceSpec, inference_from_json, parse_inference
from depmicro.studies.search_space import (Param, check_configs, check_param_types, parse_ablate, parse_search,
                                           parse_search_space)

# Names other modules import from here (the parts of a study file live in datasets.py, fields.py, search_space.py).
__all__ = ["BASE_ARM", "SYNTHETIC", "TOP_KEYS", "DatasetSpec", "Param", "Resources", "SchedulerSpec", "StudySpec",
           "WarmStart", "check_name", "data_key", "load_spec", "spec_from_dict", "spec_from_json", "spec_from_state",
           "split_data_key"]

TOP_KEYS = (
    "name", "description", "datasets", "seeds", "test_ratio", "val_ratio", "protocol", "base_config", "search_space", "ablate",
    "search", "scheduler", "num_samples", "max_concurrent_trials", "resources_per_trial", "replicates", "metric",
    "mode", "baselines", "max_failures", "inference", "time_budget", "max_trial_seconds",
    "warm_start", "confirm",
)
BASE_ARM = "base"  # the one arm of an ablation that repeats the base configuration
_RESERVED = ("test_ratio", "val_ratio", "protocol")  # set by the study, not searched: the protocol is fixed per study


@dataclass(frozen=True)
class WarmStart:
    """Seed the Optuna search with the `top_k` best configurations of `study` (studies/warm_start.py)."""

    study: str
    top_k: int


@dataclass
class StudySpec:
    name: str
    datasets: list[DatasetSpec]
    seeds: list[int] = field(default_factory=lambda: [0])
    test_ratio: float = 0.1
    val_ratio: float = 0.1
    protocol: str = "paper"  # paper | renormalized (core.data.evaluation.protocol_matrix), fixed per study
    base_config: dict = field(default_factory=dict)   # ModelConfig overrides (file merged with inline)
    search_space: dict[str, Param] = field(default_factory=dict)
    ablate: dict[str, list] = field(default_factory=dict)  # one factor at a time: field -> values
    search: str = "optuna"
    search_seed: int = 0
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    num_samples: int = 1
    max_concurrent_trials: int = 1
    resources: Resources = field(default_factory=Resources)
    replicates: int = 1
    metric: str = "val_pcc_per_microbe"
    mode: str = "max"
    baselines: list[str] = field(default_factory=list)
    max_failures: int = 2
    description: str = ""
    inference: InferenceSpec | None = None  # sampling knobs scored per checkpoint (studies/inference.py)
    time_budget_s: float | None = None      # the whole study (Tune's time_budget_s); resume continues it
    max_trial_seconds: float | None = None  # one trial's wall time before it is stopped
    warm_start: WarmStart | None = None
    confirm: ConfirmSpec | None = None       # re-run the best configurations on extra seeds (studies/confirm.py)
    source: str | None = None  # the study file, for messages and the MLflow artifact

    # --- derived views the runner and the trainable share ---------------------------------------

    @property
    def data_keys(self) -> list[str]:
        """One key per (dataset, held-out seed): the unit dependency statistics are computed for."""
        return [data_key(d.name, s) for d in self.datasets for s in self.seeds]

    @property
    def arms(self) -> dict[str, dict]:
        """Ablation arms, label -> overrides; a search study has the single arm "search".

        Values equal to the base configuration's (vae_pretrain=true when the base pretrains) would
        train the same model with the same seeds once per factor; they collapse into one arm, "base"."""
        if not self.ablate:
            return {"search": {}}

        base = config_from_dict(self.base_config)
        out: dict[str, dict] = {}
        for k, vals in self.ablate.items():
            for v in vals:
                if config_from_dict({**self.base_config, k: v}) == base:
                    out.setdefault(BASE_ARM, {})
                else:
                    out[f"{k}={_label(v)}"] = {k: v}
        return out

    def dataset(self, name: str) -> DatasetSpec:
        for d in self.datasets:
            if d.name == name:
                return d
        raise DepmicroError(f"study {self.name!r} has no dataset {name!r}")

    def n_trials(self) -> int:
        grid = 1
        for p in self.search_space.values():
            if p.type == "grid" or (self.search == "grid" and p.type == "choice"):
                grid *= len(p.values)
        return self.num_samples * grid * len(self.arms) * len(self.data_keys) * self.replicates

    def max_epochs(self) -> int:
        epochs = [config_from_dict(self.base_config).epochs]
        if "epochs" in self.search_space:
            p = self.search_space["epochs"]
            epochs += [int(v) for v in p.values] if p.values else [int(p.high)]
        epochs += [int(v) for v in self.ablate.get("epochs", [])]
        return max(epochs)

    def to_dict(self) -> dict:
        """Plain JSON-able form (absolute paths): stored with the Tune experiment so resume needs no file."""
        d = dataclasses.asdict(self)
        d["search_space"] = {k: {kk: (list(vv) if isinstance(vv, tuple) else vv) for kk, vv in dataclasses.asdict(p).items()
                                 if kk != "name" and vv not in (None, ())}
                             for k, p in self.search_space.items()}
        d["datasets"] = [{**dataclasses.asdict(x), "pretrain": list(x.pretrain)} for x in self.datasets]
        d["inference"] = self.inference.to_dict() if self.inference else None
        return d


def _label(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


# --- loading ----------------------------------------------------------------------------------

def load_spec(path: str | os.PathLike) -> StudySpec:
    """Read and validate a study file; every problem is one DepmicroError line naming the file."""
    p = Path(path)
    if not p.exists():
        raise DepmicroError(f"{p}: no such study file")
    raw = load_yaml(p, "study file")
    try:
        return spec_from_dict(raw, base_dir=p.resolve().parent, source=str(p.resolve()))
    except DepmicroError as exc:
        raise DepmicroError(f"{p}: {exc}") from None


def spec_from_dict(raw: Any, base_dir: str | os.PathLike = ".", source: str | None = None) -> StudySpec:
    """Validate a parsed study mapping. Relative paths are resolved against `base_dir`."""
    base_dir = Path(base_dir)
    name = _name(raw)
    datasets = parse_datasets(raw.get("datasets"), base_dir)
    seeds = int_list(raw.get("seeds", [0]), "seeds", minimum=0, maximum=SEED_MAX)
    test_ratio, val_ratio, protocol = _protocol(raw)
    base = _base_config(raw.get("base_config", {}), base_dir)
    base["test_ratio"], base["val_ratio"], base["protocol"] = test_ratio, val_ratio, protocol
    search_space, ablate, algorithm, search_seed = _search_settings(raw)
    scheduler = parse_scheduler(raw.get("scheduler", "asha"))
    num_samples = integer(raw.get("num_samples", 1), "num_samples", minimum=1)
    if algorithm == "grid" and num_samples != 1 and "num_samples" in raw:
        raise DepmicroError("num_samples must be 1 with search: grid (use replicates or seeds to repeat)")
    max_conc = integer(raw.get("max_concurrent_trials", 1), "max_concurrent_trials", minimum=1)
    resources = parse_resources(raw.get("resources_per_trial", {}))
    replicates = integer(raw.get("replicates", 1), "replicates", minimum=1)
    metric, mode = _metric(raw.get("metric", "val_pcc_per_microbe"), raw.get("mode"))
    baselines = _baselines(raw.get("baselines", []))
    max_failures = integer(raw.get("max_failures", 2), "max_failures", minimum=-1)
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise DepmicroError(f"description must be text, not {description!r}")
    inference = parse_inference(raw.get("inference"), base, set(search_space) | set(ablate))
    time_budget = duration(raw["time_budget"], "time_budget") if raw.get("time_budget") is not None else None
    max_trial = (duration(raw["max_trial_seconds"], "max_trial_seconds")
                 if raw.get("max_trial_seconds") is not None else None)
    warm_start = _warm_start(raw.get("warm_start"), name, algorithm)
    confirm = parse_confirm(raw.get("confirm"), seeds)

    spec = StudySpec(
        name=name, datasets=datasets, seeds=seeds, test_ratio=test_ratio, val_ratio=val_ratio, protocol=protocol, base_config=base,
        search_space=search_space, ablate=ablate, search=algorithm, search_seed=search_seed, scheduler=scheduler,
        num_samples=num_samples, max_concurrent_trials=max_conc, resources=resources, replicates=replicates,
        metric=metric, mode=mode, baselines=baselines, max_failures=max_failures, description=description, source=source,
        inference=inference, time_budget_s=time_budget, max_trial_seconds=max_trial, warm_start=warm_start,
        confirm=confirm,
    )
    check_configs(base, search_space, ablate, spec.arms.values(), inference.settings() if inference else [{}])
    if scheduler.type == "asha" and scheduler.grace_period > spec.max_epochs():
        raise DepmicroError(f"scheduler.grace_period ({scheduler.grace_period}) exceeds the epochs ({spec.max_epochs()})")
    return spec


def _name(raw: Any) -> str:
    """The study's name, once the file is known to be a mapping of known keys."""
    if not isinstance(raw, dict):
        raise DepmicroError("a study file must be a mapping of settings")
    unknown = sorted(set(map(str, raw)) - set(TOP_KEYS))
    if unknown:
        raise DepmicroError(f"unknown study key {unknown[0]!r} (known: {', '.join(TOP_KEYS)})")
    if "name" not in raw:
        raise DepmicroError("study key 'name' is required")
    return check_name(raw["name"])


def _protocol(raw: dict) -> tuple[float, float, str]:
    """test_ratio, val_ratio and protocol: the held-out protocol, fixed for every trial of the study."""
    test_ratio = number(raw.get("test_ratio", 0.1), "test_ratio")
    val_ratio = number(raw.get("val_ratio", 0.1), "val_ratio")
    if not (0 < test_ratio < 1 and 0 < val_ratio < 1 and test_ratio + val_ratio < 1):
        raise DepmicroError(f"test_ratio and val_ratio must be in (0, 1) with a sum < 1, not {test_ratio}/{val_ratio}")
    protocol = raw.get("protocol", "paper")
    if protocol not in PROTOCOLS:
        raise DepmicroError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    return test_ratio, val_ratio, protocol


def _search_settings(raw: dict) -> tuple[dict[str, Param], dict[str, list], str, int]:
    """search_space, ablate and the search algorithm (with its seed), checked against each other."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)} - set(_RESERVED)
    search_space = parse_search_space(raw.get("search_space") or {}, fields)
    check_param_types(search_space)
    ablate = parse_ablate(raw.get("ablate") or {}, fields)
    clash = sorted(set(search_space) & set(ablate))
    if clash:
        raise DepmicroError(f"{clash[0]!r} is both searched and ablated; pick one")
    algorithm, search_seed = parse_search(raw.get("search", "optuna"))
    if algorithm == "optuna" and any(p.type == "grid" for p in search_space.values()):
        bad = next(k for k, p in search_space.items() if p.type == "grid")
        raise DepmicroError(f"search_space.{bad}: type grid needs search: grid or random (Optuna samples, it does not enumerate)")
    if algorithm == "optuna" and not search_space:
        raise DepmicroError("search: optuna needs a search_space (or use search: random to repeat the base config)")
    if algorithm == "optuna" and ablate:
        raise DepmicroError("ablate needs search: grid (each arm x dataset x seed is one trial)")
    if algorithm == "grid":
        cont = [k for k, p in search_space.items() if p.type not in ("grid", "choice")]
        if cont:
            raise DepmicroError(f"search_space.{cont[0]}: search: grid takes only grid/choice entries, not {search_space[cont[0]].type}")
    return search_space, ablate, algorithm, search_seed


def spec_from_state(d: Any) -> StudySpec:
    """The spec stored in a study's state file, validated again as if it were a study file: the
    state file is plain JSON that a person (or a half-finished copy) can break, and resume acts on it."""
    if not isinstance(d, dict):
        raise DepmicroError("'spec' missing or not a mapping")
    try:
        raw = {
            "name": d["name"], "datasets": d["datasets"], "seeds": d["seeds"], "test_ratio": d["test_ratio"],
            "val_ratio": d["val_ratio"], "protocol": d.get("protocol", "paper"), "base_config": d["base_config"], "search_space": d["search_space"],
            "ablate": d["ablate"], "search": {"algorithm": d["search"], "seed": d["search_seed"]},
            "scheduler": d["scheduler"], "num_samples": d["num_samples"],
            "max_concurrent_trials": d["max_concurrent_trials"], "resources_per_trial": d["resources"],
            "replicates": d["replicates"], "metric": d["metric"], "mode": d["mode"], "baselines": d["baselines"],
            "max_failures": d["max_failures"], "description": d.get("description", ""),
            "time_budget": d.get("time_budget_s"), "max_trial_seconds": d.get("max_trial_seconds"),
            "warm_start": d.get("warm_start"), "confirm": d.get("confirm"),
        }
        inference = d.get("inference")
        if isinstance(inference, dict) and isinstance(inference.get("grid"), dict):  # to_dict's form -> the file's
            raw["inference"] = {**inference["grid"], "default": inference.get("default")}
        elif inference is not None:
            raw["inference"] = inference
    except KeyError as exc:
        raise DepmicroError(f"spec has no {exc.args[0]!r}") from None
    if isinstance(raw["base_config"], dict):
        raw["base_config"] = {k: v for k, v in raw["base_config"].items() if k not in ("test_ratio", "val_ratio", "protocol")}
    if isinstance(raw["datasets"], list):
        raw["datasets"] = [{k: v for k, v in x.items() if v not in (None, [], {})} if isinstance(x, dict) else x
                           for x in raw["datasets"]]
    if not isinstance(raw["datasets"], list) or any(not isinstance(x, dict) or not os.path.isabs(str(x.get("path", "")))
                                                    and x.get("path") != SYNTHETIC for x in raw["datasets"]):
        raise DepmicroError("spec datasets must be absolute paths")
    spec = spec_from_dict(raw, base_dir="/", source=d.get("source") if isinstance(d.get("source"), str) else None)
    return spec


def spec_from_json(d: dict) -> StudySpec:
    """The inverse of StudySpec.to_dict (paths already absolute)."""
    d = dict(d)
    d["datasets"] = [DatasetSpec(**{**x, "pretrain": tuple(x.get("pretrain", ()))}) for x in d["datasets"]]
    d["search_space"] = {k: Param(name=k, **{**v, "values": tuple(v.get("values", ()))}) for k, v in d["search_space"].items()}
    d["scheduler"] = SchedulerSpec(**d["scheduler"])
    d["resources"] = Resources(**d["resources"])
    d["inference"] = inference_from_json(d.get("inference"))
    d["warm_start"] = WarmStart(**d["warm_start"]) if d.get("warm_start") else None
    d["confirm"] = ConfirmSpec(d["confirm"]["top_k"], tuple(d["confirm"]["seeds"])) if d.get("confirm") else None
    return StudySpec(**d)


# --- pieces -----------------------------------------------------------------------------------

def _base_config(v: Any, base_dir: Path) -> dict:
    """`base_config: configs/tiny.yaml`, or a mapping of overrides with an optional `file` key."""

    if isinstance(v, str):
        v = {"file": v}
    if not isinstance(v, dict):
        raise DepmicroError(f"base_config must be a config file path or a mapping, not {v!r}")
    v = dict(v)
    merged: dict = {}
    if "file" in v:
        fpath = resolve_path(v.pop("file"), base_dir, "base_config.file")
        try:
            loaded = load_yaml(fpath, "config file")
        except DepmicroError as exc:
            raise DepmicroError(f"base_config.file {exc}") from None
        if not isinstance(loaded, dict):
            raise DepmicroError(f"base_config.file {fpath}: must be a mapping of settings")
        merged.update(loaded)
    merged.update(v)
    try:
        cfg = config_from_dict(merged)
    except DepmicroError as exc:
        raise DepmicroError(f"base_config: {exc}") from None
    full = config_to_dict(cfg)
    return {k: full[k] for k in merged}  # keep only what the user set; defaults stay the dataclass's


def _metric(metric: Any, mode: Any) -> tuple[str, str]:
    allowed = [f"val_{m}" for m in METRICS] + [f"best_val_{m}" for m in METRICS]
    if metric not in allowed:
        raise DepmicroError(f"metric must be one of {', '.join(allowed)}, not {metric!r}")
    natural = direction(metric.removeprefix("best_").removeprefix("val_"))
    mode = natural if mode is None else mode
    if mode not in ("min", "max"):
        raise DepmicroError(f"mode must be min or max, not {mode!r}")
    if mode != natural:
        raise DepmicroError(f"metric {metric} is {'minimized' if natural == 'min' else 'maximized'}; mode: {mode} would search for the worst models")
    return metric, mode


def _baselines(v: Any) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or any(x not in BASELINES for x in v):
        raise DepmicroError(f"baselines must be a list of {', '.join(BASELINES)}, not {v!r}")
    return list(dict.fromkeys(v))


def _warm_start(v: Any, name: str, algorithm: str) -> WarmStart | None:
    if v is None:
        return None
    if not isinstance(v, dict) or set(v) - {"study", "top_k"} or "study" not in v:
        raise DepmicroError(f"warm_start must be a mapping with 'study' (an earlier study's name) and 'top_k', not {v!r}")
    study = v["study"]
    if not isinstance(study, str) or not NAME.match(study):
        raise DepmicroError(f"warm_start.study must be a study name, not {study!r}")
    if study == name:
        raise DepmicroError("warm_start.study names this study itself; use `study resume` to continue a study")
    if algorithm != "optuna":
        raise DepmicroError("warm_start needs search: optuna (it seeds the Optuna search)")
    return WarmStart(study, integer(v.get("top_k", 1), "warm_start.top_k", minimum=1))
