"""Study files: what a researcher writes, validated before any Ray process starts.

A mistake in a study file should cost a second, not a cluster start-up; so every key, type, path
and search-space bound is checked here and reported as one line naming the file and the key.
Paths are resolved relative to the study file, so a study runs from any working directory.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depmicro.core.data.baselines import BASELINES
from depmicro.core.data.dataset import peek_dataset
from depmicro.core.data.evaluation import METRICS, PROTOCOLS, direction
from depmicro.core.errors import DepmicroError
from depmicro.core.io.safe_yaml import load_yaml
from depmicro.core.model.config import ModelConfig, config_from_dict, config_to_dict
from depmicro.studies.confirm import ConfirmSpec, parse_confirm
from depmicro.studies.inference import InferenceSpec, inference_from_json, parse_inference
from depmicro.core.model.config import config_from_dict

SYNTHETIC = "synthetic"
PARAM_TYPES = ("uniform", "loguniform", "int", "choice", "grid")
SEARCH_ALGORITHMS = ("optuna", "random", "grid")
SCHEDULERS = ("asha", "none")
TOP_KEYS = (
    "name", "description", "datasets", "seeds", "test_ratio", "val_ratio", "protocol", "base_config", "search_space", "ablate",
    "search", "scheduler", "num_samples", "max_concurrent_trials", "resources_per_trial", "replicates", "metric",
    "mode", "baselines", "max_failures", "inference", "time_budget", "max_trial_seconds",
    "warm_start", "confirm",
)
BASE_ARM = "base"  # the one arm of an ablation that repeats the base configuration
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_MAX_VALIDATED_COMBOS = 4096


@dataclass(frozen=True)
class DatasetSpec:
    """One target set. `path` is absolute, or "synthetic" (generated on the driver from `synthetic`)."""

    name: str
    path: str
    metadata: str | None = None
    pretrain: tuple[str, ...] = ()
    synthetic: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Param:
    """One searched ModelConfig field. `values` for choice/grid, `low`/`high` otherwise."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    values: tuple = ()


@dataclass(frozen=True)
class SchedulerSpec:
    type: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0


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


def data_key(dataset: str, seed: int) -> str:
    return f"{dataset}/s{seed}"


def split_data_key(key: str) -> tuple[str, int]:
    name, seed = key.rsplit("/s", 1)
    return name, int(seed)


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
    if not isinstance(raw, dict):
        raise DepmicroError("a study file must be a mapping of settings")
    unknown = sorted(set(map(str, raw)) - set(TOP_KEYS))
    if unknown:
        raise DepmicroError(f"unknown study key {unknown[0]!r} (known: {', '.join(TOP_KEYS)})")
    if "name" not in raw:
        raise DepmicroError("study key 'name' is required")
    name = check_name(raw["name"])

    datasets = _datasets(raw.get("datasets"), base_dir)
    seeds = _int_list(raw.get("seeds", [0]), "seeds", minimum=0)
    test_ratio = _number(raw.get("test_ratio", 0.1), "test_ratio")
    val_ratio = _number(raw.get("val_ratio", 0.1), "val_ratio")
    if not (0 < test_ratio < 1 and 0 < val_ratio < 1 and test_ratio + val_ratio < 1):
        raise DepmicroError(f"test_ratio and val_ratio must be in (0, 1) with a sum < 1, not {test_ratio}/{val_ratio}")

    protocol = raw.get("protocol", "paper")
    if protocol not in PROTOCOLS:
        raise DepmicroError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")

    base = _base_config(raw.get("base_config", {}), base_dir)
    base["test_ratio"], base["val_ratio"], base["protocol"] = test_ratio, val_ratio, protocol
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    reserved = {"test_ratio", "val_ratio", "protocol"}  # set by the study, not searched: the protocol is fixed per study

    search_space = _search_space(raw.get("search_space") or {}, fields - reserved)
    _check_param_types(search_space)
    ablate = _ablate(raw.get("ablate") or {}, fields - reserved)
    clash = sorted(set(search_space) & set(ablate))
    if clash:
        raise DepmicroError(f"{clash[0]!r} is both searched and ablated; pick one")

    algorithm, search_seed = _search(raw.get("search", "optuna"))
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

    scheduler = _scheduler(raw.get("scheduler", "asha"))
    num_samples = _int(raw.get("num_samples", 1), "num_samples", minimum=1)
    if algorithm == "grid" and num_samples != 1 and "num_samples" in raw:
        raise DepmicroError("num_samples must be 1 with search: grid (use replicates or seeds to repeat)")
    max_conc = _int(raw.get("max_concurrent_trials", 1), "max_concurrent_trials", minimum=1)
    resources = _resources(raw.get("resources_per_trial", {}))
    replicates = _int(raw.get("replicates", 1), "replicates", minimum=1)
    metric, mode = _metric(raw.get("metric", "val_pcc_per_microbe"), raw.get("mode"))
    baselines = _baselines(raw.get("baselines", []))
    max_failures = _int(raw.get("max_failures", 2), "max_failures", minimum=-1)
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise DepmicroError(f"description must be text, not {description!r}")

    inference = parse_inference(raw.get("inference"), base, set(search_space) | set(ablate))
    time_budget = _duration(raw["time_budget"], "time_budget") if raw.get("time_budget") is not None else None
    max_trial = (_duration(raw["max_trial_seconds"], "max_trial_seconds")
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
    _check_configs(spec)
    if scheduler.type == "asha" and scheduler.grace_period > spec.max_epochs():
        raise DepmicroError(f"scheduler.grace_period ({scheduler.grace_period}) exceeds the epochs ({spec.max_epochs()})")
    return spec


def check_name(name: Any) -> str:
    """A study name as a path component: letters, digits, `_.-`, starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise DepmicroError(f"study name must be letters, digits, '_', '.' or '-' (at most 100, no path "
                            f"separators or '..'), not {name!r}")
    return name


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

def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise DepmicroError(f"{what} must be a number, not {v!r}")
    return float(v)


def _int(v: Any, what: str, minimum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise DepmicroError(f"{what} must be an integer, not {v!r}")
    if minimum is not None and v < minimum:
        raise DepmicroError(f"{what} must be >= {minimum}, not {v}")
    return v


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(v: Any, what: str) -> float:
    """Seconds, from a number (seconds) or text like `90s`, `30m`, `2h`, `1.5h`."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd])\s*", v)
        if not m:
            raise DepmicroError(f"{what} must be seconds or a duration like 90s, 30m, 2h, not {v!r}")
        secs = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        secs = _number(v, what)
    if secs <= 0:
        raise DepmicroError(f"{what} must be positive, not {v!r}")
    return secs


def _int_list(v: Any, what: str, minimum: int | None = None) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not v:
        raise DepmicroError(f"{what} must be a non-empty list of integers, not {v!r}")
    out = [_int(x, f"{what} entry", minimum) for x in v]
    if len(set(out)) != len(out):
        raise DepmicroError(f"{what} has a duplicate entry: {out}")
    return out


def _path(v: Any, base_dir: Path, what: str, must_exist: bool = True) -> str:
    if not isinstance(v, str) or not v:
        raise DepmicroError(f"{what} must be a path, not {v!r}")
    p = Path(os.path.expanduser(v))
    p = p if p.is_absolute() else (base_dir / p)
    p = Path(os.path.normpath(p))
    if must_exist and not p.exists():
        raise DepmicroError(f"{what}: no such file {p}")
    return str(p)


_DATASET_KEYS = ("path", "name", "metadata", "pretrain", "synthetic")
_SYNTHETIC_INTS = {"n_samples": (10, 1_000_000), "n_taxa": (2, 100_000), "seed": (0, 2**32 - 1),
                   "n_directed": (0, 50_000), "n_symmetric": (0, 50_000)}
_MAX_SYNTHETIC_CELLS = 50_000_000  # 400 MB of float64 counts: more is a typo, not a test set


def _data_file(v: Any, base_dir: Path, what: str) -> str:
    """A data path, and its header read now: a directory or an unreadable table fails here, not
    in the driver after Ray has started."""
    path = _path(v, base_dir, what)
    try:
        peek_dataset(path)
    except DepmicroError as exc:
        raise DepmicroError(f"{what}: {exc}") from None
    return path


def _synthetic(v: dict, what: str) -> dict:
    """Generator settings, checked as core.synthetic.make_synthetic would check them, and bounded."""
    extra = sorted(set(map(str, v)) - set(_SYNTHETIC_INTS) - {"metadata"})
    if extra:
        raise DepmicroError(f"{what}: unknown key {extra[0]!r} (known: {', '.join([*_SYNTHETIC_INTS, 'metadata'])})")
    out = dict(v)
    for k, (lo, hi) in _SYNTHETIC_INTS.items():
        if k in v:
            out[k] = _int(v[k], f"{what}.{k}", minimum=lo)
            if out[k] > hi:
                raise DepmicroError(f"{what}.{k} must be <= {hi}, not {out[k]}")
    if "metadata" in v and not isinstance(v["metadata"], bool):
        raise DepmicroError(f"{what}.metadata must be true or false, not {v['metadata']!r}")
    n, d = out.get("n_samples", 300), out.get("n_taxa", 30)
    if n * d > _MAX_SYNTHETIC_CELLS:
        raise DepmicroError(f"{what}: {n} x {d} is too large (at most {_MAX_SYNTHETIC_CELLS} cells)")
    pairs = out.get("n_directed", 6) + out.get("n_symmetric", 6)
    if 2 * pairs > d:
        raise DepmicroError(f"{what}: {d} taxa cannot hold {pairs} disjoint planted pairs (n_directed + n_symmetric)")
    return out


def _datasets(v: Any, base_dir: Path) -> list[DatasetSpec]:
    if v is None:
        raise DepmicroError("study key 'datasets' is required (paths, or 'synthetic')")
    if isinstance(v, (str, dict)):
        v = [v]
    if not isinstance(v, list) or not v:
        raise DepmicroError(f"datasets must be a non-empty list, not {v!r}")
    out: list[DatasetSpec] = []
    for i, item in enumerate(v):
        what = f"datasets[{i}]"
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict):
            raise DepmicroError(f"{what} must be a path or a mapping with 'path', not {item!r}")
        unknown = sorted(set(map(str, item)) - set(_DATASET_KEYS))
        if unknown:
            raise DepmicroError(f"{what}: unknown key {unknown[0]!r} (known: {', '.join(_DATASET_KEYS)})")
        if "path" not in item:
            raise DepmicroError(f"{what}: 'path' is required")
        synth = item.get("synthetic", {}) or {}
        if not isinstance(synth, dict):
            raise DepmicroError(f"{what}.synthetic must be a mapping of generator settings, not {synth!r}")
        if item["path"] == SYNTHETIC:
            path, default_name = SYNTHETIC, SYNTHETIC
            synth = _synthetic(synth, f"{what}.synthetic")
        else:
            if synth:
                raise DepmicroError(f"{what}: 'synthetic' settings need path: synthetic")
            path = _data_file(item["path"], base_dir, f"{what}.path")
            default_name = Path(path).name.split(".")[0]
        name = item.get("name", default_name)
        if not isinstance(name, str) or not _NAME.match(name):
            raise DepmicroError(f"{what}.name must be letters, digits, '_', '.' or '-', not {name!r}")
        metadata = item.get("metadata")
        if metadata is not None:
            metadata = _path(metadata, base_dir, f"{what}.metadata")
            if not Path(metadata).is_file():
                raise DepmicroError(f"{what}.metadata: {metadata} is not a file")
        pre = item.get("pretrain", []) or []
        if isinstance(pre, str):
            pre = [pre]
        if not isinstance(pre, list):
            raise DepmicroError(f"{what}.pretrain must be a list of paths, not {pre!r}")
        pre_paths = tuple(_data_file(x, base_dir, f"{what}.pretrain") for x in pre)
        if path != SYNTHETIC and path in pre_paths:
            raise DepmicroError(f"{what}.pretrain lists the target set itself (pretraining is leave-target-out)")
        out.append(DatasetSpec(name=name, path=path, metadata=metadata, pretrain=pre_paths, synthetic=dict(synth)))
    names = [d.name for d in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DepmicroError(f"datasets: two sets are named {dup[0]!r}; give one a 'name'")
    return out


def _base_config(v: Any, base_dir: Path) -> dict:
    """`base_config: configs/tiny.yaml`, or a mapping of overrides with an optional `file` key."""

    if isinstance(v, str):
        v = {"file": v}
    if not isinstance(v, dict):
        raise DepmicroError(f"base_config must be a config file path or a mapping, not {v!r}")
    v = dict(v)
    merged: dict = {}
    if "file" in v:
        fpath = _path(v.pop("file"), base_dir, "base_config.file")
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


def _search_space(v: Any, fields: set[str]) -> dict[str, Param]:
    if not isinstance(v, dict):
        raise DepmicroError(f"search_space must be a mapping of config field -> distribution, not {v!r}")
    out: dict[str, Param] = {}
    for key, d in v.items():
        what = f"search_space.{key}"
        if key not in fields:
            hint = " (set by the study's test_ratio/val_ratio/protocol)" if key in ("test_ratio", "val_ratio", "protocol") else ""
            raise DepmicroError(f"{what}: not a searchable ModelConfig field{hint}")
        if isinstance(d, list):
            d = {"type": "choice", "values": d}
        if not isinstance(d, dict) or "type" not in d:
            raise DepmicroError(f"{what} must be a mapping with 'type' ({', '.join(PARAM_TYPES)}), not {d!r}")
        typ = d["type"]
        if typ not in PARAM_TYPES:
            raise DepmicroError(f"{what}.type must be one of {', '.join(PARAM_TYPES)}, not {typ!r}")
        allowed = {"type", "values"} if typ in ("choice", "grid") else {"type", "low", "high"}
        extra = sorted(set(d) - allowed)
        if extra:
            raise DepmicroError(f"{what}: unknown key {extra[0]!r} for type {typ} (expected {', '.join(sorted(allowed))})")
        if typ in ("choice", "grid"):
            vals = d.get("values")
            if not isinstance(vals, list) or not vals:
                raise DepmicroError(f"{what}.values must be a non-empty list")
            if any(isinstance(x, (dict, list)) for x in vals):
                raise DepmicroError(f"{what}.values must be plain values, not nested lists or mappings")
            out[key] = Param(key, typ, values=tuple(vals))
            continue
        if "low" not in d or "high" not in d:
            raise DepmicroError(f"{what}: type {typ} needs 'low' and 'high'")
        if typ == "int":
            low, high = _int(d["low"], f"{what}.low"), _int(d["high"], f"{what}.high")
        else:
            low, high = _number(d["low"], f"{what}.low"), _number(d["high"], f"{what}.high")
        if not low < high:
            raise DepmicroError(f"{what}: low ({low}) must be below high ({high})")
        if typ == "loguniform" and low <= 0:
            raise DepmicroError(f"{what}: loguniform needs low > 0, not {low}")
        out[key] = Param(key, typ, low=low, high=high)
    return out


def _ablate(v: Any, fields: set[str]) -> dict[str, list]:
    if not isinstance(v, dict):
        raise DepmicroError(f"ablate must be a mapping of config field -> list of values, not {v!r}")
    out = {}
    for key, vals in v.items():
        if key not in fields:
            raise DepmicroError(f"ablate.{key}: not a ModelConfig field")
        if not isinstance(vals, list) or not vals or any(isinstance(x, (dict, list)) for x in vals):
            raise DepmicroError(f"ablate.{key} must be a non-empty list of plain values")
        out[key] = list(vals)
    return out


def _search(v: Any) -> tuple[str, int]:
    if isinstance(v, str):
        v = {"algorithm": v}
    if not isinstance(v, dict):
        raise DepmicroError(f"search must be one of {', '.join(SEARCH_ALGORITHMS)} or a mapping with 'algorithm', not {v!r}")
    extra = sorted(set(v) - {"algorithm", "seed"})
    if extra:
        raise DepmicroError(f"search: unknown key {extra[0]!r} (known: algorithm, seed)")
    alg = v.get("algorithm", "optuna")
    if alg not in SEARCH_ALGORITHMS:
        raise DepmicroError(f"search algorithm must be one of {', '.join(SEARCH_ALGORITHMS)}, not {alg!r}")
    return alg, _int(v.get("seed", 0), "search.seed", minimum=0)


def _scheduler(v: Any) -> SchedulerSpec:
    if isinstance(v, str) or v is None:
        v = {"type": v or "none"}
    if not isinstance(v, dict):
        raise DepmicroError(f"scheduler must be asha, none, or a mapping with 'type', not {v!r}")
    extra = sorted(set(v) - {"type", "grace_period", "reduction_factor"})
    if extra:
        raise DepmicroError(f"scheduler: unknown key {extra[0]!r} (known: type, grace_period, reduction_factor)")
    typ = v.get("type", "asha")
    if typ not in SCHEDULERS:
        raise DepmicroError(f"scheduler type must be one of {', '.join(SCHEDULERS)}, not {typ!r}")
    grace = _int(v.get("grace_period", 1), "scheduler.grace_period", minimum=1)
    rf = _number(v.get("reduction_factor", 2), "scheduler.reduction_factor")
    if rf <= 1:
        raise DepmicroError(f"scheduler.reduction_factor must be > 1, not {rf}")
    return SchedulerSpec(typ, grace, rf)


def _resources(v: Any) -> Resources:
    if not isinstance(v, dict):
        raise DepmicroError(f"resources_per_trial must be a mapping with cpu and gpu, not {v!r}")
    extra = sorted(set(v) - {"cpu", "gpu"})
    if extra:
        raise DepmicroError(f"resources_per_trial: unknown key {extra[0]!r} (known: cpu, gpu)")
    cpu = _number(v.get("cpu", 1), "resources_per_trial.cpu")
    gpu = _number(v.get("gpu", 0), "resources_per_trial.gpu")
    if cpu <= 0:
        raise DepmicroError(f"resources_per_trial.cpu must be > 0, not {cpu}")
    if gpu < 0 or (gpu > 1 and not float(gpu).is_integer()):
        raise DepmicroError(f"resources_per_trial.gpu must be a fraction in [0, 1] or a whole number, not {gpu}")
    return Resources(cpu, gpu)


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


_MAX_INT_VALUES = 1000  # an int range is checked value by value up to this many values


def _check_param_types(space: dict[str, Param]) -> None:
    """A continuous distribution for an integer, boolean or text field draws values the field cannot
    take (`hidden_dim: {type: uniform}` gives 37.4): refuse it by the field's declared type."""

    types = {f.name: str(f.type) for f in dataclasses.fields(ModelConfig)}
    for k, p in space.items():
        t = types[k]
        if p.type in ("uniform", "loguniform") and t != "float":
            kind = {"int": "an integer", "bool": "a true/false", "str": "a text"}.get(t, t)
            fix = "type int" if t == "int" else "type choice"
            raise DepmicroError(f"search_space.{k}: {k} is {kind} field; {p.type} draws fractions (use {fix})")
        if p.type == "int" and t not in ("int", "float"):
            raise DepmicroError(f"search_space.{k}: {k} is not a number field; use type choice")


def _candidates(p: Param) -> list:
    """Every value a distribution can draw, where that is a finite list; else the interval's ends
    (every ModelConfig range rule is an interval, so the ends decide it for continuous draws)."""
    if p.values:
        return list(p.values)
    if p.type == "int" and p.high - p.low + 1 <= _MAX_INT_VALUES:
        return list(range(int(p.low), int(p.high) + 1))
    return [p.low, p.high]


def _warm_start(v: Any, name: str, algorithm: str) -> WarmStart | None:
    if v is None:
        return None
    if not isinstance(v, dict) or set(v) - {"study", "top_k"} or "study" not in v:
        raise DepmicroError(f"warm_start must be a mapping with 'study' (an earlier study's name) and 'top_k', not {v!r}")
    study = v["study"]
    if not isinstance(study, str) or not _NAME.match(study):
        raise DepmicroError(f"warm_start.study must be a study name, not {study!r}")
    if study == name:
        raise DepmicroError("warm_start.study names this study itself; use `study resume` to continue a study")
    if algorithm != "optuna":
        raise DepmicroError("warm_start needs search: optuna (it seeds the Optuna search)")
    return WarmStart(study, _int(v.get("top_k", 1), "warm_start.top_k", minimum=1))


def _check_configs(spec: StudySpec) -> None:
    """Every value a trial can get must make a valid ModelConfig: fail now, not in trial 37 at 3 a.m.
    Each drawable value alone, every pair of searched fields (the rules that tie two fields, such
    as hidden_dim % n_heads, are pairwise), each ablation arm with each searched value, and the full
    product where it is small enough to enumerate."""
    def check(over: dict, where: str) -> None:
        try:
            config_from_dict({**spec.base_config, **over})
        except DepmicroError as exc:
            hint = ""
            if any(isinstance(v, bool) for v in over.values()) and "must be a string" in str(exc):
                hint = " (YAML reads off/on/yes/no as booleans: quote it, e.g. \"off\")"
            raise DepmicroError(f"{where}: {exc}{hint}") from None

    settings = spec.inference.settings() if spec.inference else [{}]
    cands = {k: _candidates(p) for k, p in spec.search_space.items()}
    for k, vals in cands.items():
        for c in vals:
            for s in settings:  # e.g. a searched timesteps below an inference sampling_fraction
                where = f"search_space.{k} value {c!r}" + (f" with inference {s}" if s else "")
                check({k: c, **s}, where)
    for k, vals in spec.ablate.items():
        for c in vals:
            check({k: c}, f"ablate.{k} value {c!r}")
    combos = "search_space combination "
    for a, b in itertools.combinations(cands, 2):
        for va, vb in itertools.product(cands[a], cands[b]):
            check({a: va, b: vb}, f"{combos}{a}={va!r}, {b}={vb!r}")
    for arm in spec.arms.values():
        for k, vals in cands.items():
            if k not in arm:
                for c in vals:
                    check({**arm, k: c}, "ablate " + ", ".join(f"{a}={v!r}" for a, v in arm.items()) + f" with search_space.{k}={c!r}")
    if 2 < len(cands) and math.prod(len(v) for v in cands.values()) <= _MAX_VALIDATED_COMBOS:
        keys = list(cands)
        for combo in itertools.product(*(cands[k] for k in keys)):
            over = dict(zip(keys, combo))
            check(over, combos + ", ".join(f"{k}={v!r}" for k, v in over.items()))
