"""The raw-matrix cache and the one .npz format for dependency statistics.

Why: a study computes F and MI once per (data, held-out pattern, estimator settings, sample order)
and every trial only thresholds them (issue 3). The key hashes the NaN pattern of the training
view together with its values, so two splits never share an entry, and the held-out truth is not
in the key because it is not in the view. Files are written to a temp name and renamed, so trials
racing on one entry each see a whole file or none. Loading never unpickles (allow_pickle=False).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from depmicro.core.io.atomic import atomic_path
from depmicro.core.deps.stats import DepSettings, DepStats, compute_dep_stats, order_from_metadata
from depmicro.core.io.content_hash import update_with_matrix
from depmicro.core.errors import DepmicroError

NPZ_FORMAT = "depmicro-deps/1"


def _atomic_savez(path: Path, arrays: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def dep_stats_to_npz(stats: DepStats, path: str | Path, *, dep: np.ndarray | None = None) -> None:
    """One format for caches, checkpoints, bundles and `depmicro deps --out` (plus `dep` there)."""
    arrays = {
        "format": np.array(NPZ_FORMAT),
        "f_stat": np.asarray(stats.f_stat, dtype=np.float64),
        "f_pvalue": np.asarray(stats.f_pvalue, dtype=np.float64),
        "mi": np.asarray(stats.mi, dtype=np.float64),
        "var_names": np.array([str(v) for v in stats.var_names], dtype=np.str_),
        "seconds": np.array(float(stats.seconds)),
    }
    if stats.mi_pvalue is not None:
        arrays["mi_pvalue"] = np.asarray(stats.mi_pvalue, dtype=np.float64)
    if dep is not None:
        arrays["dep"] = np.asarray(dep, dtype=bool)
    _atomic_savez(Path(path), arrays)


def dep_stats_from_npz(path: str | Path) -> DepStats:
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            f, fp, mi = z["f_stat"], z["f_pvalue"], z["mi"]
            mip = z["mi_pvalue"] if "mi_pvalue" in z.files else None
            names = [str(v) for v in z["var_names"]]
            seconds = float(z["seconds"]) if "seconds" in z.files else 0.0
    except FileNotFoundError:
        raise DepmicroError(f"{p}: no such file") from None
    except (OSError, KeyError, ValueError) as exc:
        raise DepmicroError(f"{p}: not a dependency-statistics file ({type(exc).__name__}: {exc})") from None
    D = len(names)
    for name, a in (("f_stat", f), ("f_pvalue", fp), ("mi", mi)) + ((("mi_pvalue", mip),) if mip is not None else ()):
        if a.shape != (D, D):
            raise DepmicroError(f"{p}: {name} has shape {a.shape}, expected ({D}, {D})")
    return DepStats(f_stat=f, f_pvalue=fp, mi=mi, mi_pvalue=mip, var_names=names, seconds=seconds)


def cache_key(Y: np.ndarray, settings: DepSettings = DepSettings(), order: np.ndarray | None = None) -> str:
    """sha256 of the values, the NaN (held-out) pattern, the shape, the settings and the order."""
    h = hashlib.sha256()
    h.update(NPZ_FORMAT.encode())
    update_with_matrix(h, Y)
    h.update(json.dumps(asdict(settings), sort_keys=True).encode())
    h.update(b"order:" + (b"none" if order is None else np.ascontiguousarray(order, dtype=np.int64).tobytes()))
    return h.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("DEPMICRO_CACHE") or ".depmicro_cache")


def cached_dep_stats(Y: np.ndarray, settings: DepSettings = DepSettings(), *, cache_dir: str | Path | None = None,
                     order: np.ndarray | None = None, var_names=None, metadata=None, device: str | None = None) -> DepStats:
    """compute_dep_stats once per (data, held-out pattern, settings, order); later calls read the file.

    Concurrent trials may race to write the same entry: each writes a temp file and renames it, so
    a reader sees a whole file or none, and a corrupt entry is recomputed and replaced.
    """
    if order is None and settings.order_by is not None:
        order = order_from_metadata(metadata, settings.order_by)
    d = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = d / f"deps-{cache_key(Y, settings, order)}.npz"
    if path.exists():
        try:
            stats = dep_stats_from_npz(path)
            if stats.f_stat.shape[0] == np.shape(Y)[1]:
                if var_names is not None:
                    stats.var_names = [str(v) for v in var_names]
                return stats
        except DepmicroError:
            pass
    stats = compute_dep_stats(Y, settings, order=order, var_names=var_names, device=device)
    try:
        dep_stats_to_npz(stats, path)
    except OSError:
        pass  # an unwritable cache costs time, not correctness
    return stats
