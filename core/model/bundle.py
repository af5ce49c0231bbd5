"""Model bundles on disk: safetensors weights and plain JSON/NPZ, never pickle.

A bundle is a directory holding model.safetensors, config.json, dependency.npz (Dep matrix and
AR rank), normalization.json, taxa.json, metadata_encoder.json and a SHA-256 manifest. It is built
in a temporary sibling directory and renamed into place, so a crash never leaves half a bundle.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from depmicro.core.errors import DepmicroError
from depmicro.core.io.atomic import atomic_dir
from depmicro.core.io.manifest import MANIFEST, verify_manifest, write_manifest
from depmicro.core.model.config import config_from_dict, config_to_dict
from depmicro.core.model.imputer import DepMicroDiffImputer, LatentStats

FORMAT = "depmicrodiff/1"


def write_model_files(imputer, d: Path) -> None:
    """The loadable part of a bundle, written into an existing directory (no manifest)."""
    from safetensors.torch import save_file

    d = Path(d)
    state = {k: v.detach().cpu().contiguous() for k, v in imputer.net.state_dict().items()}
    save_file(state, str(d / "model.safetensors"), metadata={"format": FORMAT})
    (d / "config.json").write_text(json.dumps(config_to_dict(imputer.cfg), indent=2))
    dep = imputer.dep if imputer.dep is not None else np.zeros((0, 0), dtype=bool)
    with open(d / "dependency.npz", "wb") as f:
        np.savez(f, dep=dep.astype(bool), has_dep=np.array(imputer.dep is not None), rank=imputer.rank.astype(np.int64))
    (d / "normalization.json").write_text(json.dumps({
        "transform": "log10(100 * counts / rowsum + 1)", "scale": 100.0, "pseudocount": 1.0,
        **imputer.latent_stats.to_json(),
    }, indent=2))
    (d / "taxa.json").write_text(json.dumps({"n_taxa": imputer.D, "var_names": imputer.var_names}))
    (d / "metadata_encoder.json").write_text(json.dumps({
        "enabled": bool(imputer.cfg.use_metadata and imputer.meta_dim > 0),
        "model": imputer.cfg.metadata_model, "pooling": "mean", "dim": int(imputer.meta_dim)}, indent=2))


def manifested_dir(directory: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Build a directory with `fill(tmp)`, add its SHA-256 manifest, then swap it into place."""
    def fill_and_sign(d: Path) -> None:
        fill(d)
        write_manifest(d)

    return atomic_dir(directory, fill_and_sign)


def save_model(imputer: DepMicroDiffImputer, directory: str | os.PathLike) -> None:
    manifested_dir(directory, lambda d: write_model_files(imputer, d))


def _read_json(d: Path, name: str) -> dict:
    p = d / name
    if not p.is_file():
        raise DepmicroError(f"{d}: not a DepMicroDiff model directory (no {name})")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        raise DepmicroError(f"{p}: unreadable JSON") from None


def load_model(directory: str | os.PathLike, device: str = "cpu"):
    """Rebuild a DepMicroDiffImputer from a bundle; verifies the manifest first when there is one."""
    from safetensors.torch import load_file

    d = Path(directory)
    if not d.is_dir():
        raise DepmicroError(f"{d}: no such model directory")
    if (d / MANIFEST).exists():
        verify_manifest(d)
    cfg_dict = _read_json(d, "config.json")
    # bundles written before `estimate` existed returned the median of n_impute_samples draws (one draw when n = 1);
    # they keep doing so, so an old bundle imputes exactly what it did when it was written
    cfg_dict.setdefault("estimate", "median")
    cfg = config_from_dict(cfg_dict)
    taxa = _read_json(d, "taxa.json")
    norm = _read_json(d, "normalization.json")
    meta = _read_json(d, "metadata_encoder.json")
    if not (d / "dependency.npz").is_file() or not (d / "model.safetensors").is_file():
        raise DepmicroError(f"{d}: model bundle incomplete (dependency.npz or model.safetensors missing)")
    try:
        with np.load(d / "dependency.npz", allow_pickle=False) as z:
            dep = z["dep"] if bool(z["has_dep"]) else None
            rank = z["rank"]
    except (ValueError, KeyError, OSError) as exc:
        raise DepmicroError(f"{d}/dependency.npz: unreadable ({exc})") from None
    imp = DepMicroDiffImputer(cfg, int(taxa["n_taxa"]), taxa["var_names"], int(meta.get("dim", 0)), dep=dep, rank=rank)
    imp.latent_stats = LatentStats.from_json(norm)
    try:
        imp.net.load_state_dict(load_file(str(d / "model.safetensors")))
    except RuntimeError as exc:
        raise DepmicroError(f"{d}/model.safetensors: weights do not fit the config ({str(exc).splitlines()[0]})") from None
    imp.net.eval()
    return imp.to(device)
