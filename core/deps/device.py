"""The torch device the dependency statistics run on (cuda when available)."""
from __future__ import annotations

from depmicro.core.errors import DepmicroError


def torch_device(device: str | None):
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(device)
    except RuntimeError:
        raise DepmicroError(f"unknown torch device {device!r}") from None
