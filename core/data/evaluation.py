"""The evaluation protocol: seeded held-out masks over nonzero entries, and metrics computed on
held-out entries only, in the normalized log space.

Two protocols decide that space (`protocol_matrix`). `paper` normalizes each row over all its
entries before anything is held out (the paper's Eq. 10-11), so the observed entries of a row fix
the total mass of its held-out ones. `renormalized` holds entries out on the counts and normalizes
each row over its observed entries only; the truth of a held-out entry is its count on that same
observed-renormalized scale, log10(100 * count / observed rowsum + 1), so nothing a model sees
depends on a held-out value.

Every imputer, classical or diffusion, is scored through `evaluate`, so numbers are comparable.
This module is the one home of metric names and their directions: training's checkpoint
selection, study search modes, MLflow keys and the analysis tables all read METRICS,
LOWER_IS_BETTER and `better` from here (add a metric: compute it in `evaluate`, name it in METRICS).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import math

import numpy as np

from depmicro.core.errors import DepmicroError
from depmicro.core.data.dataset import normalize

METRICS = ("pcc_per_microbe", "pcc", "cos", "rmse", "mae")  # scores: what validation selects and tables show
COUNTS = ("n_microbes", "n_heldout")  # sizes evaluate() also returns (not scores, never selected on)
METRIC_NAMES = ("pcc", "cos", "rmse", "mae", "pcc_per_microbe", *COUNTS)  # evaluate()'s keys, in its order
LOWER_IS_BETTER = frozenset({"rmse", "mae"})  # every other metric in METRICS is maximised
PROTOCOLS = ("paper", "renormalized")
MIN_HELDOUT_PER_MICROBE = 5


@dataclass(frozen=True)
class Split:
    """Boolean (n, D) masks. `observed` is what a model may see: everything but test and val."""

    test: np.ndarray
    val: np.ndarray
    seed: int
    test_ratio: float
    val_ratio: float

    @property
    def observed(self) -> np.ndarray:
        return ~(self.test | self.val)

    @property
    def train_observed(self) -> np.ndarray:
        return self.observed

    def fingerprint(self) -> str:
        """Stable hash of the masks, for cache keys."""
        h = hashlib.sha256()
        h.update(np.packbits(self.test).tobytes())
        h.update(np.packbits(self.val).tobytes())
        return h.hexdigest()[:16]


def make_split(Y: np.ndarray, seed: int = 0, test_ratio: float = 0.1, val_ratio: float = 0.1) -> Split:
    """Hold out `test_ratio` of the nonzero entries as test, then `val_ratio` of the remaining nonzero
    entries as validation. Zeros are never held out: their truth is unknown (absent or undetected)."""
    if not 0 < test_ratio < 1:
        raise DepmicroError(f"test ratio must be in (0, 1), not {test_ratio}")
    if not 0 <= val_ratio < 1 or test_ratio + val_ratio >= 1:
        raise DepmicroError(f"val ratio must be in [0, 1) with test + val < 1, not {val_ratio}")
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.shape[0] < 2 or Y.shape[1] < 2:
        shape = " x ".join(map(str, Y.shape))
        raise DepmicroError(f"held-out evaluation needs at least 2 samples and 2 taxa, not {shape} "
                            "(a one-row or one-column table has no per-microbe correlation to score)")
    nz = np.flatnonzero(Y > 0)
    if nz.size < 2:
        raise DepmicroError("too few nonzero entries to hold any out")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(nz)
    n_test = max(1, int(round(test_ratio * nz.size)))
    n_val = int(round(val_ratio * (nz.size - n_test)))
    test = np.zeros(Y.size, dtype=bool)
    val = np.zeros(Y.size, dtype=bool)
    test[perm[:n_test]] = True
    val[perm[n_test : n_test + n_val]] = True
    return Split(test=test.reshape(Y.shape), val=val.reshape(Y.shape), seed=seed, test_ratio=test_ratio, val_ratio=val_ratio)


def training_view(Y: np.ndarray, split: Split) -> np.ndarray:
    """Y with every held-out entry set to NaN: what an imputer, and the dependency statistics, see."""
    out = np.array(Y, dtype=np.float64, copy=True)
    out[~split.observed] = np.nan
    return out


def protocol_matrix(counts: np.ndarray, split: Split, protocol: str = "paper") -> np.ndarray:
    """The (n, D) matrix a protocol scores on; its observed part (training_view) is what models see.

    `renormalized`: row i is scaled by the sum of its observed counts only. A row whose nonzero
    entries were all held out has no observed mass to set a scale; its held-out truth falls back to
    the whole row's sum (its view is all zeros either way, so nothing leaks).
    """
    if protocol not in PROTOCOLS:
        raise DepmicroError(f"unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
    counts = np.asarray(counts, dtype=np.float64)
    if split.test.shape != counts.shape:
        raise DepmicroError(f"split masks {split.test.shape} do not match the data {counts.shape}")
    if protocol == "paper":
        return normalize(counts)
    obs_sum = np.where(split.observed, counts, 0.0).sum(axis=1, keepdims=True)
    scale = np.where(obs_sum > 0, obs_sum, counts.sum(axis=1, keepdims=True))
    rel = np.divide(100.0 * counts, scale, out=np.zeros_like(counts), where=scale > 0)
    return np.log10(rel + 1.0)


def _pcc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def evaluate(Y_true: np.ndarray, Y_pred: np.ndarray, mask: np.ndarray) -> dict[str, float | int]:
    """Metrics on the entries where `mask` is True.

    `pcc_per_microbe` is the mean PCC over microbes with at least 5 held-out entries; a microbe
    whose imputed values are constant scores 0 there (it explains nothing of the variation).
    """
    Y_true, Y_pred, mask = np.asarray(Y_true, float), np.asarray(Y_pred, float), np.asarray(mask, bool)
    if Y_true.shape != Y_pred.shape or Y_true.shape != mask.shape:
        raise DepmicroError(f"shape mismatch: truth {Y_true.shape}, prediction {Y_pred.shape}, mask {mask.shape}")
    if not mask.any():
        raise DepmicroError("no held-out entries to evaluate")
    t, p = Y_true[mask], Y_pred[mask]
    if not np.isfinite(p).all():
        raise DepmicroError("imputed values contain NaN or inf at held-out entries")
    per = []
    for j in range(mask.shape[1]):
        m = mask[:, j]
        if m.sum() >= MIN_HELDOUT_PER_MICROBE:
            per.append(_pcc(Y_true[m, j], Y_pred[m, j]))
    nt, npred = np.linalg.norm(t), np.linalg.norm(p)
    return {
        "pcc": _pcc(t, p),
        "cos": float(t @ p / (nt * npred)) if nt > 0 and npred > 0 else 0.0,
        "rmse": float(np.sqrt(np.mean((t - p) ** 2))),
        "mae": float(np.mean(np.abs(t - p))),
        "pcc_per_microbe": float(np.mean(per)) if per else float("nan"),
        "n_microbes": len(per),
        "n_heldout": int(mask.sum()),
    }


def undefined_score_note(metrics: dict) -> str | None:
    """A one-line stderr note when the test pcc_per_microbe came out undefined (null). Why: on a small or very
    sparse table no microbe reaches MIN_HELDOUT_PER_MICROBE held-out entries, and a bare null reads like a
    failure of the method."""
    if metrics.get("n_microbes", 1) > 0:
        return None
    return (f"note: test pcc_per_microbe is undefined: no microbe has {MIN_HELDOUT_PER_MICROBE} held-out entries "
            f"({metrics.get('n_heldout', 0)} held out in all); the table is too small or too sparse for this score")


def per_microbe_pcc(Y_true: np.ndarray, Y_pred: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """PCC per microbe (NaN where fewer than 5 entries are held out), for heatmaps and boxplots."""
    out = np.full(mask.shape[1], np.nan)
    for j in range(mask.shape[1]):
        m = mask[:, j]
        if m.sum() >= MIN_HELDOUT_PER_MICROBE:
            out[j] = _pcc(Y_true[m, j], Y_pred[m, j])
    return out


def direction(metric: str) -> str:
    """"min" or "max": how a search or a selection treats `metric` (a name in METRICS)."""
    if metric not in METRICS:
        raise DepmicroError(f"unknown metric {metric!r} (choose from {', '.join(METRICS)})")
    return "min" if metric in LOWER_IS_BETTER else "max"


def better(metric: str, a: float, b: float | None) -> bool:
    """Whether score `a` beats the best so far `b` (None or NaN: nothing yet) on `metric`; NaN never wins."""
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return not math.isnan(a)
    return a < b if direction(metric) == "min" else a > b
