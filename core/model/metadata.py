"""Frozen BERT-family encoder for per-sample metadata text (Section IV-b).

Each distinct text line is encoded once (mean pooling over tokens, as the default
sentence-transformers model is configured) and cached; missing lines get no vector and the model
uses its learned null token instead. Loading is offline (`local_files_only`).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from depmicro.core.errors import DepmicroError

_MODELS: dict[str, tuple] = {}


def resolve_model(name: str) -> str:
    """An installed package that ships a model folder (the default), a local directory, or a hub name."""
    p = Path(name).expanduser()
    if p.is_dir():
        return str(p.resolve())
    spec = importlib.util.find_spec(name.replace("-", "_")) if name.replace("-", "_").isidentifier() else None
    if spec is not None and spec.submodule_search_locations:
        pkg = Path(list(spec.submodule_search_locations)[0])
        for cand in (pkg / "model", pkg):
            if (cand / "config.json").is_file():
                return str(cand)
    return name


def _load(name: str):
    if name not in _MODELS:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = resolve_model(name)
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a weight-loading bar on stderr would land inside every command's output
        try:
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise DepmicroError(f"metadata model {name!r} cannot be loaded offline ({str(exc).splitlines()[0]})") from None
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        _MODELS[name] = (tok, model)
    return _MODELS[name]


class MetadataEncoder:
    """Text lines -> (n, dim) float32 vectors plus a (n,) bool "has metadata" flag."""

    def __init__(self, name: str):
        self.name = name
        self._cache: dict[str, np.ndarray] = {}

    @property
    def dim(self) -> int:
        return int(_load(self.name)[1].config.hidden_size)

    def encode(self, lines: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        has = np.array([bool(x) for x in lines])
        new = sorted({x for x in lines if x and x not in self._cache})
        if new:
            tok, model = _load(self.name)
            with torch.no_grad():
                for i in range(0, len(new), 64):
                    chunk = new[i : i + 64]
                    enc = tok(chunk, padding=True, truncation=True, max_length=128, return_tensors="pt")
                    out = model(**enc).last_hidden_state
                    m = enc["attention_mask"][..., None].float()
                    vec = (out * m).sum(1) / m.sum(1).clamp(min=1)
                    for line, v in zip(chunk, vec.numpy()):
                        self._cache[line] = v.astype(np.float32)
        dim = self.dim if (new or self._cache) else 0
        out = np.zeros((len(lines), dim), dtype=np.float32)
        for i, line in enumerate(lines):
            if line:
                out[i] = self._cache[line]
        return out, has

    def describe(self) -> dict:
        return {"model": self.name, "resolved": resolve_model(self.name), "pooling": "mean", "dim": self.dim,
                "cached_lines": len(self._cache)}


def describe_json(enc: "MetadataEncoder | None", dim: int) -> str:
    if enc is None:
        return json.dumps({"model": None, "dim": 0})
    return json.dumps({"model": enc.name, "pooling": "mean", "dim": dim}, indent=2)
