"""Shared test utilities: where the real data lives, and a skip when it does not."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TCMA = SHARED_DATA / "tcma"
TCMA_SETS = ("stad", "coad", "hnsc")


def tcma_path(name: str) -> Path:
    """Path of a TCMA set; skips the calling test where ../shared/data is not on this machine."""
    path = TCMA / f"{name}.h5ad" if not name.endswith(".tsv") else TCMA / name
    if not path.exists():
        pytest.skip(f"real TCMA data absent: {path} (../shared/data is only on the team's machines)")
    return path
