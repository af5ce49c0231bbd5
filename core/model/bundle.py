"""Model bundles on disk: safetensors weights and plain JSON/NPZ, never pickle.

A bundle is a directory holding model.safetensors, config.json, dependency.npz (Dep matrix and
AR rank), normalization.json, taxa.json, metadata_encoder.json and a SHA-256 manifest. It is built
in a temporary sibling directory and renamed into place, so a crash never leaves half a bundle.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from depmicro.core.errors import DepmicroError
from depmicro.core.io.atomic import atomic_dir
from depmicro.core.io.manifest import MANIFEST, read_bundle, read_member, write_manifest
from depmicro.core.model.config import config_from_dict, config_to_dict
from depmicro.core.model.module import DepMicroDiff, LatentStats

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


def manifested_dir(directory: str | os.PathLike, fill: Callable[[Path], None], kind: str | None = None) -> Path:
    """Build a directory with `fill(tmp)`, add its SHA-256 manifest, then swap it into place."""
    def fill_and_sign(d: Path) -> None:
        fill(d)
        write_manifest(d, kind=kind)

    return atomic_dir(directory, fill_and_sign)


def save_model(imputer: DepMicroDiff, directory: str | os.PathLike) -> None:
    manifested_dir(directory, lambda d: write_model_files(imputer, d))


MODEL_FILES = ("config.json", "taxa.json", "normalization.json", "metadata_encoder.json", "dependency.npz",
               "model.safetensors")


def bundle_files(d: Path) -> dict[str, bytes]:
    """The bundle's files, each read once: verified against the manifest when there is one (always,
    for what save_model writes); else the fixed names, still refusing symlinks."""
    if (d / MANIFEST).exists() or (d / MANIFEST).is_symlink():
        files = read_bundle(d)
    else:
        files = {n: read_member(d, n) for n in MODEL_FILES if (d / n).exists() or (d / n).is_symlink()}
    for n in MODEL_FILES:
        if n not in files:
            raise DepmicroError(f"{d}: not a complete DepMicroDiff model directory (no {n})")
    return files


def _json(d: Path, files: dict[str, bytes], name: str) -> dict:
    try:
        obj = json.loads(files[name])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DepmicroError(f"{d / name}: unreadable JSON") from None
    if not isinstance(obj, dict):
        raise DepmicroError(f"{d / name}: expected a JSON object, not {type(obj).__name__}")
    return obj


def _floats(d: Path, norm: dict, key: str, n: int) -> np.ndarray:
    v = norm.get(key)
    if not isinstance(v, list) or len(v) != n or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise DepmicroError(f"{d / 'normalization.json'}: {key} must be a list of {n} numbers")
    a = np.asarray(v, dtype=np.float32)
    if not np.isfinite(a).all():
        raise DepmicroError(f"{d / 'normalization.json'}: {key} holds a non-finite number")
    return a


def _int_field(d: Path, obj: dict, name: str, key: str, minimum: int = 0) -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise DepmicroError(f"{d / name}: {key} must be an integer >= {minimum}, not {v!r}")
    return v


def load_model(directory: str | os.PathLike, device: str = "cpu"):
    """Rebuild a DepMicroDiff from a bundle, loading from the very bytes that were verified.
    Every field is checked for type and shape: a bundle is untrusted input, its faults one line."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    d = Path(directory)
    if not d.is_dir():
        raise DepmicroError(f"{d}: no such model directory")
    files = bundle_files(d)
    try:
        cfg_dict = _json(d, files, "config.json")
        # bundles written before `estimate` existed returned the median of n_impute_samples draws (one draw when
        # n = 1); they keep doing so, so an old bundle imputes exactly what it did when it was written
        cfg_dict.setdefault("estimate", "median")
        cfg = config_from_dict(cfg_dict)
    except DepmicroError as exc:
        raise DepmicroError(f"{d / 'config.json'}: {exc}") from None
    taxa = _json(d, files, "taxa.json")
    norm = _json(d, files, "normalization.json")
    meta = _json(d, files, "metadata_encoder.json")
    D = _int_field(d, taxa, "taxa.json", "n_taxa", minimum=1)
    names = taxa.get("var_names")
    if not isinstance(names, list) or len(names) != D or not all(isinstance(x, str) for x in names):
        raise DepmicroError(f"{d / 'taxa.json'}: var_names must be a list of {D} names")
    meta_dim = _int_field(d, meta, "metadata_encoder.json", "dim") if "dim" in meta else 0
    try:
        with np.load(io.BytesIO(files["dependency.npz"]), allow_pickle=False) as z:
            dep = z["dep"] if bool(z["has_dep"]) else None
            rank = z["rank"]
    except Exception as exc:  # zipfile/numpy raise many kinds on a damaged archive
        raise DepmicroError(f"{d / 'dependency.npz'}: unreadable ({type(exc).__name__})") from None
    if dep is not None and (dep.shape != (D, D) or dep.dtype != bool):
        raise DepmicroError(f"{d / 'dependency.npz'}: dep must be a {D} x {D} boolean matrix, not {dep.dtype} {dep.shape}")
    if rank.shape != (D,) or not np.issubdtype(rank.dtype, np.integer):
        raise DepmicroError(f"{d / 'dependency.npz'}: rank must be {D} integers, not {rank.dtype} {rank.shape}")
    try:
        state = load_safetensors(files["model.safetensors"])
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise DepmicroError(f"{d / 'model.safetensors'}: unreadable safetensors ({str(exc).splitlines()[0][:200]})") from None
    imp = DepMicroDiff(cfg, D, names, meta_dim, dep=dep, rank=rank)
    for key in ("latent_mean", "latent_std", "latent_lo", "latent_hi"):
        _floats(d, norm, key, cfg.latent_dim)  # a string or a wrong length: one line, before from_json
    imp.latent_stats = LatentStats.from_json(norm)
    try:
        imp.net.load_state_dict(state)
    except RuntimeError as exc:
        raise DepmicroError(f"{d}/model.safetensors: weights do not fit the config ({str(exc).splitlines()[0]})") from None
    imp.net.eval()
    return imp.to(device)
