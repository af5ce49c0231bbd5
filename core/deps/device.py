"""The torch device the dependency statistics run on (cuda when available)."""
from __future__ import annotations

from depmicro.core.errors import DepmicroError


def torch_device(device: str | None):
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DepmicroError(f"unknown torch device {device!r}") from None
    try:  # a device torch knows by name may still be absent here (cuda on a CPU build, cuda:3 on one GPU)
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError) as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0].split(". ")[0][:160]
        raise DepmicroError(f"torch device {device!r} is not available here ({why})") from None
    return dev
