"""The `datasets:` entries of a study file (a path, a mapping with path/name/metadata/pretrain, or
`synthetic` with generator settings), and the key naming one (data set, held-out seed) unit. Every
data file's header is read here, so a bad table fails before Ray starts."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depmicro.core.data.dataset import peek_dataset
from depmicro.core.errors import DepmicroError
from depmicro.core.model.config import SEED_MAX
from depmicro.studies.fields import NAME, integer
from depmicro.studies.fields import path as resolve_path

SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class DatasetSpec:
    """One target set. `path` is absolute, or "synthetic" (generated on the driver from `synthetic`)."""

    name: str
    path: str
    metadata: str | None = None
    pretrain: tuple[str, ...] = ()
    synthetic: dict = field(default_factory=dict)


def data_key(dataset: str, seed: int) -> str:
    return f"{dataset}/s{seed}"


def split_data_key(key: str) -> tuple[str, int]:
    name, seed = key.rsplit("/s", 1)
    return name, int(seed)


_DATASET_KEYS = ("path", "name", "metadata", "pretrain", "synthetic")
_SYNTHETIC_INTS = {"n_samples": (10, 1_000_000), "n_taxa": (2, 100_000), "seed": (0, SEED_MAX),
                   "n_directed": (0, 50_000), "n_symmetric": (0, 50_000)}
_MAX_SYNTHETIC_CELLS = 50_000_000  # 400 MB of float64 counts: more is a typo, not a test set


def _data_file(v: Any, base_dir: Path, what: str) -> str:
    """A data path, and its header read now: a directory or an unreadable table fails here, not
    in the driver after Ray has started."""
    where = resolve_path(v, base_dir, what)
    try:
        peek_dataset(where)
    except DepmicroError as exc:
        raise DepmicroError(f"{what}: {exc}") from None
    return where


def _synthetic(v: dict, what: str) -> dict:
    """Generator settings, checked as core.synthetic.make_synthetic would check them, and bounded."""
    extra = sorted(set(map(str, v)) - set(_SYNTHETIC_INTS) - {"metadata"})
    if extra:
        raise DepmicroError(f"{what}: unknown key {extra[0]!r} (known: {', '.join([*_SYNTHETIC_INTS, 'metadata'])})")
    out = dict(v)
    for k, (lo, hi) in _SYNTHETIC_INTS.items():
        if k in v:
            out[k] = integer(v[k], f"{what}.{k}", minimum=lo)
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


def parse_datasets(v: Any, base_dir: Path) -> list[DatasetSpec]:
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
        if not isinstance(name, str) or not NAME.match(name):
            raise DepmicroError(f"{what}.name must be letters, digits, '_', '.' or '-', not {name!r}")
        metadata = item.get("metadata")
        if metadata is not None:
            metadata = resolve_path(metadata, base_dir, f"{what}.metadata")
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
