"""The one interface every imputer implements, so baselines and DepMicroDiff are scored alike."""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Imputer(Protocol):
    """Fills the entries a mask marks missing.

    `Y` is the normalized (n, D) matrix; `observed` is a bool (n, D) mask, True where the value may
    be used. Values under `observed == False` are never read (callers may leave NaN there).
    `metadata` is one text line per sample or None. `impute` returns a full (n, D) matrix whose
    observed entries equal the input.
    """

    name: str

    def fit(self, Y: np.ndarray, observed: np.ndarray, metadata: Sequence[str | None] | None = None) -> "Imputer": ...

    def impute(self, Y: np.ndarray, observed: np.ndarray, metadata: Sequence[str | None] | None = None) -> np.ndarray: ...


def keep_observed(Y: np.ndarray, observed: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Observed entries come back exactly as given; only missing ones take the imputed value."""
    return np.where(observed, np.nan_to_num(Y), filled)
