"""Dependency statistics for the Dep mask, for all taxon pairs at once: the settings that key them,
the raw matrices (directional F in fstat.py, MI in mi.py or ksg.py) and the mask thresholded from them.

Why closed form: a study thresholds the same raw F and MI matrices in every trial, and the naive
route (one statsmodels OLS pair per ordered pair, one k-NN MI estimate per pair) grows with D^2
model fits. Here everything is a handful of D x D matrix products, so all pairs cost about as
much as a few pairs did, on CPU or (torch) GPU. Measured agreement and timings: README,
"Dependency statistics" (tests/bench/deps.py prints them).

Missing values (NaN): the training view holds out test/validation entries as NaN (statistics never
see ground truth). NaN is treated as 0, i.e. unobserved, the same as a zero of a sparse profile,
which is itself "not seen" (absent or undetected). This keeps every pair on the same complete
design, so F is an exact OLS F on a fixed matrix (and equals statsmodels on it) and MI needs no
per-pair sample sizes. The cost: held-out entries were nonzero, so the view is slightly sparser
than the truth; that attenuates statistics equally in every trial of a study and cannot leak the
held-out values, which are never read.
"""
from __future__ import annotations

import numbers
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from depmicro.core.deps.fstat import f_statistics
from depmicro.core.deps.ksg import ksg_mutual_information
from depmicro.core.deps.mi import mutual_information
from depmicro.core.errors import DepmicroError


MI_ESTIMATORS = ("binned", "ksg")


@dataclass(frozen=True)
class DepSettings:
    """Everything that changes the raw matrices; part of the cache key."""

    lag: int = 1
    order_by: str | None = None  # metadata column to order samples by (else file order)
    n_permutations: int = 0  # MI permutation p-values when > 0
    seed: int = 0
    mi_bins: int = 8  # at most this many equal-frequency bins for a column's nonzero values (plus one for zeros)
    mi_bias_correction: bool = True  # Miller-Madow: near 0 for independent pairs, so thresholds mean the same at any n
    mi_estimator: str = "binned"  # "binned" (plug-in, fast) or "ksg" (sklearn's k=3 estimator, deps/ksg.py)
    mi_jitter_repeats: int = 1  # ksg: average over jitter seeds seed .. seed + repeats - 1

    def __post_init__(self) -> None:
        if not isinstance(self.lag, numbers.Integral) or isinstance(self.lag, bool) or self.lag < 1:
            raise DepmicroError(f"lag must be a positive integer, not {self.lag!r}")
        if not isinstance(self.n_permutations, numbers.Integral) or self.n_permutations < 0:
            raise DepmicroError(f"number of permutations must be >= 0, not {self.n_permutations!r}")
        if not isinstance(self.mi_bins, numbers.Integral) or self.mi_bins < 1:
            raise DepmicroError(f"mi_bins must be a positive integer, not {self.mi_bins!r}")
        if self.mi_estimator not in MI_ESTIMATORS:
            raise DepmicroError(f"unknown MI estimator {self.mi_estimator!r} (choose from {', '.join(MI_ESTIMATORS)})")
        if not isinstance(self.mi_jitter_repeats, numbers.Integral) or self.mi_jitter_repeats < 1:
            raise DepmicroError(f"mi_jitter_repeats must be a positive integer, not {self.mi_jitter_repeats!r}")
        if self.mi_estimator == "ksg" and self.n_permutations > 0:
            raise DepmicroError("permutation p-values need the binned MI estimator (KSG costs O(n^2) per pair and permutation)")
        for name in ("lag", "n_permutations", "seed", "mi_bins", "mi_jitter_repeats"):  # plain ints: numpy ints break the JSON cache key
            object.__setattr__(self, name, int(getattr(self, name)))


@dataclass
class DepStats:
    f_stat: np.ndarray  # (D, D) float, [i, j] = F of j -> i (does x_j's lag improve y_i), diagonal 0
    f_pvalue: np.ndarray  # (D, D)
    mi: np.ndarray  # (D, D) symmetric, nats, zero diagonal
    mi_pvalue: np.ndarray | None
    var_names: list[str]
    seconds: float


def order_from_metadata(metadata, column: str) -> np.ndarray:
    """Stable sample order by a metadata column: numerically when every value parses as a number,
    else as text; missing values go last (in file order)."""
    import pandas as pd

    if metadata is None:
        raise DepmicroError(f"ordering by {column!r} needs metadata, and there is none")
    if column not in metadata.columns:
        raise DepmicroError(f"unknown metadata column {column!r} to order by (have: {', '.join(map(str, metadata.columns))})")
    col = metadata[column]
    num = pd.to_numeric(col, errors="coerce")
    key = num.to_numpy() if num.notna().sum() == col.notna().sum() else col.astype("string").to_numpy()
    ranked = pd.Series(key, index=np.arange(len(col))).sort_values(kind="stable", na_position="last")
    return ranked.index.to_numpy(dtype=np.int64)


def _prepare(Y: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2 or Y.shape[0] == 0 or Y.shape[1] == 0:
        raise DepmicroError(f"dependency statistics need a non-empty samples x taxa matrix, got shape {Y.shape}")
    if np.isinf(Y).any():
        raise DepmicroError("dependency statistics: matrix holds infinite values")
    if order is not None:
        order = np.asarray(order)
        if order.shape != (Y.shape[0],) or not np.array_equal(np.sort(order), np.arange(Y.shape[0])):
            raise DepmicroError(f"order must be a permutation of the {Y.shape[0]} sample indices")
        Y = Y[order]
    return np.where(np.isnan(Y), 0.0, Y)  # NaN = held out = unobserved, like a zero (module docstring)


# --- public API ------------------------------------------------------------------------------

def compute_dep_stats(Y: np.ndarray, settings: DepSettings = DepSettings(), *, order: np.ndarray | None = None,
                      var_names: Sequence[str] | None = None, device: str | None = None, metadata=None) -> DepStats:
    """Raw F and MI matrices of a (training-view) matrix; NaN entries are held out and read as 0.

    `order` (a permutation of the samples) sets the sample order for the lag; without it and with
    `settings.order_by`, the order comes from that column of `metadata`.
    """
    import torch  # noqa: F401  (imported before the clock starts: `seconds` is compute time)

    t0 = time.perf_counter()
    if order is None and settings.order_by is not None:
        order = order_from_metadata(metadata, settings.order_by)
    X = _prepare(Y, order)
    D = X.shape[1]
    names = [str(v) for v in var_names] if var_names is not None else [str(i) for i in range(D)]
    if len(names) != D:
        raise DepmicroError(f"{len(names)} taxon names for {D} columns")
    f, fp = f_statistics(X, settings.lag, device)
    if settings.mi_estimator == "ksg":
        mi, mip = ksg_mutual_information(X, seed=settings.seed, repeats=settings.mi_jitter_repeats, device=device), None
    else:
        mi, mip = mutual_information(X, settings.mi_bins, correction=settings.mi_bias_correction,
                                     n_permutations=settings.n_permutations, seed=settings.seed, device=device)
    return DepStats(f_stat=f, f_pvalue=fp, mi=mi, mi_pvalue=mip, var_names=names, seconds=time.perf_counter() - t0)


def benjamini_hochberg(p: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """BH q-values of the entries selected by `mask` (all by default); others get 1."""
    p = np.asarray(p, dtype=np.float64)
    mask = np.ones(p.shape, dtype=bool) if mask is None else mask
    q = np.ones_like(p)
    vals = p[mask]
    m = vals.size
    if m == 0:
        return q
    order = np.argsort(vals, kind="stable")
    ranked = vals[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1.0)
    q[mask] = out
    return q


def _check_level(name: str, v: float | None, upper: float | None = None) -> None:
    if v is None:
        return
    if not np.isfinite(v) or v < 0 or (upper is not None and v > upper):
        rng = f"in [0, {upper}]" if upper is not None else ">= 0"
        raise DepmicroError(f"{name} must be {rng}, not {v}")


def dependency_mask(stats: DepStats, f_threshold: float | None = None, mi_threshold: float | None = None, *,
                    f_alpha: float | None = None, mi_alpha: float | None = None, fdr: bool = False) -> np.ndarray:
    """Dep = C_dir OR C_mi with the diagonal set; Dep[i, j] True = token i may use token j.

    C_dir[i, j] = F(j -> i) > f_threshold and/or p <= f_alpha (both must hold when both are given;
    no criterion, no directed edges). C_mi likewise with MI > mi_threshold and/or the permutation
    p <= mi_alpha. With fdr, the p-values are Benjamini-Hochberg q-values over the off-diagonal pairs.
    """
    _check_level("F threshold", f_threshold)
    _check_level("MI threshold", mi_threshold)
    _check_level("F alpha", f_alpha, 1.0)
    _check_level("MI alpha", mi_alpha, 1.0)
    D = stats.f_stat.shape[0]
    off = ~np.eye(D, dtype=bool)

    def side(stat, pval, thr, alpha, what):
        if thr is None and alpha is None:
            return np.zeros((D, D), dtype=bool)
        c = off.copy()
        if thr is not None:
            c &= stat > thr
        if alpha is not None:
            if pval is None:
                raise DepmicroError(f"{what} alpha needs permutation p-values (compute with n_permutations > 0)")
            if fdr:
                if what == "MI":  # symmetric: correct over the D(D-1)/2 distinct pairs
                    upper = np.triu(off)
                    q = benjamini_hochberg(pval, upper)
                    pval = np.minimum(q, q.T)
                else:
                    pval = benjamini_hochberg(pval, off)
            c &= pval <= alpha
        return c

    dep = side(stats.f_stat, stats.f_pvalue, f_threshold, f_alpha, "F") | side(stats.mi, stats.mi_pvalue, mi_threshold, mi_alpha, "MI")
    np.fill_diagonal(dep, True)
    return dep
