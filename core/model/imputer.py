"""DepMicroDiffImputer: DepMicroDiff behind the project's `Imputer` interface (core/imputer.py), the
class a user constructs and fits like a baseline. Its `fit` delegates to the training plan
(core/train: VAE phase, then the DAT trainer) on the observed entries, with no validation split;
`depmicro.core.train.fit` is the held-out protocol (train, select by validation, test).

Layers: model/module.py (networks, inference) <- core/train <- this module; core/train never imports
it, so this module imports core/train at module level."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from depmicro.core.model.module import INFER_BATCH, DepMicroDiff, LatentStats
from depmicro.core.train import train_on_view

__all__ = ["INFER_BATCH", "DepMicroDiff", "DepMicroDiffImputer", "LatentStats"]


class DepMicroDiffImputer(DepMicroDiff):
    """DepMicroDiff with the Imputer protocol's `fit` (train on what is observed, then impute)."""

    def fit(self, Y: np.ndarray, observed: np.ndarray, metadata: Sequence[str | None] | None = None) -> "DepMicroDiffImputer":
        """Train on the observed entries only, for cfg.epochs (no validation split: see core.train.fit for that)."""
        train_on_view(self, np.asarray(Y, dtype=np.float64), np.asarray(observed, dtype=bool), metadata)
        return self
