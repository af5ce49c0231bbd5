"""Classical imputers under the same protocol: the bar DepMicroDiff has to clear."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from depmicro.core.errors import DepmicroError
from depmicro.core.imputer import Imputer, keep_observed
from depmicro.core.data.softimpute import SoftImputer


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


WIDE = 200  # taxa: from here on the iterative imputers model each taxon on its nearest features only


def default_nearest(n_taxa: int) -> int | None:
    """All predictors for narrow tables (the TCMA sets, 106 taxa: figures unchanged), WIDE beyond.

    Why: IterativeImputer's cost grows with taxa x predictors, so at 1,700 taxa all predictors take
    hours; tests/bench/baselines.py --wide measures seconds and quality of this cap."""
    return None if n_taxa <= WIDE else WIDE


@dataclass
class SklearnImputer:
    """KNNImputer / IterativeImputer on the matrix with missing entries as NaN (transductive).

    `missforest` is IterativeImputer with a random forest per taxon (Stekhoven & Buehlmann's
    MissForest recipe: mean start, forests, a few rounds); `n_nearest_features` and `max_iter` are
    scikit-learn's own options. Defaults depend on the width: up to WIDE taxa, all predictors,
    iterative 10 rounds, missforest 3 rounds of 50-tree forests; wider, WIDE nearest predictors,
    iterative 5 rounds, missforest 2 rounds of 10-tree forests, so that a 1,000 x 1,700 table takes
    minutes (tests/bench/baselines.py --wide)."""

    name: str
    seed: int = 0
    n_neighbors: int = 5
    max_iter: int | None = None
    n_nearest_features: int | None = None

    def _make(self, n_taxa: int):
        if self.name == "knn":
            from sklearn.impute import KNNImputer

            return KNNImputer(n_neighbors=self.n_neighbors)
        from sklearn.experimental import enable_iterative_imputer  # noqa: F401
        from sklearn.impute import IterativeImputer

        nearest = self.n_nearest_features if self.n_nearest_features is not None else default_nearest(n_taxa)
        if nearest is not None and nearest >= n_taxa:
            nearest = None
        wide = n_taxa > WIDE
        if self.name == "missforest":
            from sklearn.ensemble import RandomForestRegressor

            forest = RandomForestRegressor(n_estimators=10 if wide else 50, max_features="sqrt", min_samples_leaf=2,
                                           n_jobs=1, random_state=self.seed)
            return IterativeImputer(estimator=forest, max_iter=self.max_iter or (2 if wide else 3), n_nearest_features=nearest,
                                    initial_strategy="mean", random_state=self.seed, min_value=0.0)
        return IterativeImputer(max_iter=self.max_iter or (5 if wide else 10), n_nearest_features=nearest,
                                random_state=self.seed, min_value=0.0)

    def fit(self, Y, observed, metadata=None):
        return self

    def impute(self, Y, observed, metadata=None):
        X = np.where(observed, np.nan_to_num(Y), np.nan)
        # sklearn drops all-NaN columns; keep them by filling with 0 (nothing observed to learn from)
        empty = ~observed.any(axis=0)
        X[:, empty] = 0.0
        with np.errstate(all="ignore"):
            filled = self._make(X.shape[1]).fit_transform(X)
        return keep_observed(Y, observed, filled)


BASELINES = ("mean", "knn", "iterative", "missforest", "softimpute")
ITERATIVE = ("iterative", "missforest")


def make_baseline(name: str, seed: int = 0, max_iter: int | None = None, n_nearest_features: int | None = None) -> Imputer:
    """`max_iter` / `n_nearest_features` apply to the iterative imputers (max_iter also to softimpute)."""
    if name not in BASELINES:
        raise DepmicroError(f"unknown baseline {name!r} (choose from {', '.join(BASELINES)})")
    if max_iter is not None and max_iter < 1:
        raise DepmicroError(f"max_iter must be >= 1, not {max_iter}")
    if n_nearest_features is not None and n_nearest_features < 1:
        raise DepmicroError(f"n_nearest_features must be >= 1, not {n_nearest_features}")
    if name == "mean":
        return MeanImputer()
    if name == "softimpute":
        return SoftImputer(seed=seed, max_iter=max_iter or 100)
    return SklearnImputer(name=name, seed=seed, max_iter=max_iter, n_nearest_features=n_nearest_features)


def impute_with_baseline(name: str, Y: np.ndarray, observed: np.ndarray, seed: int = 0, max_iter: int | None = None,
                         n_nearest_features: int | None = None) -> tuple[np.ndarray, float]:
    """Fit and impute in one timed call; the one path the CLI, studies and benchmarks score through.
    sklearn's convergence warnings are silenced: the protocol's number is what is reported."""
    imputer = make_baseline(name, seed=seed, max_iter=max_iter, n_nearest_features=n_nearest_features)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        filled = imputer.fit(Y, observed).impute(Y, observed)
    return filled, time.perf_counter() - t0
