"""Classical imputers under the same protocol: the bar DepMicroDiff has to clear."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from depmicro.core.errors import DepmicroError
from depmicro.core.imputer import Imputer, keep_observed


@dataclass
class MeanImputer:
    """Per-microbe mean of the observed nonzero values (zero for a microbe never seen nonzero)."""

    name: str = "mean"
    means_: np.ndarray | None = field(default=None, repr=False)

    def fit(self, Y, observed, metadata=None):
        Y = np.where(observed, np.nan_to_num(Y), 0.0)
        nz = observed & (Y > 0)
        cnt = nz.sum(axis=0)
        self.means_ = np.divide((Y * nz).sum(axis=0), cnt, out=np.zeros(Y.shape[1]), where=cnt > 0)
        return self

    def impute(self, Y, observed, metadata=None):
        if self.means_ is None:
            self.fit(Y, observed)
        return keep_observed(Y, observed, np.broadcast_to(self.means_, Y.shape))


@dataclass
class SklearnImputer:
    """KNNImputer / IterativeImputer on the matrix with missing entries as NaN (transductive)."""

    name: str
    seed: int = 0
    n_neighbors: int = 5
    max_iter: int = 10

    def _make(self):
        if self.name == "knn":
            from sklearn.impute import KNNImputer

            return KNNImputer(n_neighbors=self.n_neighbors)
        from sklearn.experimental import enable_iterative_imputer  # noqa: F401
        from sklearn.impute import IterativeImputer

        return IterativeImputer(max_iter=self.max_iter, random_state=self.seed, min_value=0.0)

    def fit(self, Y, observed, metadata=None):
        return self

    def impute(self, Y, observed, metadata=None):
        X = np.where(observed, np.nan_to_num(Y), np.nan)
        # sklearn drops all-NaN columns; keep them by filling with 0 (nothing observed to learn from)
        empty = ~observed.any(axis=0)
        X[:, empty] = 0.0
        with np.errstate(all="ignore"):
            filled = self._make().fit_transform(X)
        return keep_observed(Y, observed, filled)


BASELINES = ("mean", "knn", "iterative")


def make_baseline(name: str, seed: int = 0) -> Imputer:
    if name == "mean":
        return MeanImputer()
    if name in ("knn", "iterative"):
        return SklearnImputer(name=name, seed=seed)
    raise DepmicroError(f"unknown baseline {name!r} (choose from {', '.join(BASELINES)})")


def impute_with_baseline(name: str, Y: np.ndarray, observed: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    """Fit and impute in one timed call; the one path the CLI, studies and benchmarks score through.
    sklearn's convergence warnings are silenced: the protocol's number is what is reported."""
    import time
    import warnings

    imputer = make_baseline(name, seed=seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        filled = imputer.fit(Y, observed).impute(Y, observed)
    return filled, time.perf_counter() - t0
