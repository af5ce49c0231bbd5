"""SoftImpute (Mazumder, Hastie & Tibshirani 2010): low-rank completion by iterated singular-value
soft-thresholding, in numpy.

Each iteration fills the unobserved entries with the current estimate and shrinks the singular
values of the filled matrix by lambda; a decreasing path of lambdas is run with warm starts. The
shrinkage (and with it the rank) is chosen on a validation mask drawn from the observed nonzero
entries of the training view (the protocol only ever holds out nonzero entries), then the path is
rerun on every observed entry down to the chosen lambda. Columns are centred on their observed
means first, so the low-rank part models co-variation rather than abundance levels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from depmicro.core.imputer import keep_observed

EXACT_SVD = 400  # up to this many rows or columns a full SVD is cheap; beyond, a randomized one of growing rank


def _svt(A: np.ndarray, lam: float, rank_hint: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A's singular values shrunk by lam (zeroed below it); returns the result and its rank."""
    m = min(A.shape)
    if m <= EXACT_SVD:
        U, s, Vt = np.linalg.svd(A, full_matrices=False)
    else:
        k = min(m, max(20, rank_hint + 20))
        Q = np.linalg.qr(A @ rng.standard_normal((A.shape[1], k)))[0]
        for _ in range(2):  # power iterations: the spectrum of these tables decays slowly
            Q = np.linalg.qr(A @ (A.T @ Q))[0]
        Ub, s, Vt = np.linalg.svd(Q.T @ A, full_matrices=False)
        U = Q @ Ub
    s = np.maximum(s - lam, 0.0)
    r = int((s > 0).sum())
    return (U[:, :r] * s[:r]) @ Vt[:r], r


def _path(X: np.ndarray, mask: np.ndarray, lams: np.ndarray, max_iter: int, tol: float, rng: np.random.Generator,
          on_lambda=None) -> tuple[np.ndarray, int]:
    """Run the warm-started path; `on_lambda(i, Z, rank)` sees each solution and stops the path by
    returning True. Returns the last solution."""
    Z = np.zeros_like(X)
    rank = 0
    for i, lam in enumerate(lams):
        for _ in range(max_iter):
            Z_new, rank = _svt(np.where(mask, X, Z), lam, rank, rng)
            delta = float(((Z_new - Z) ** 2).sum()) / max(float((Z ** 2).sum()), 1e-12)
            Z = Z_new
            if delta < tol:
                break
        if on_lambda is not None and on_lambda(i, Z, rank):
            break
    return Z, rank


@dataclass
class SoftImputer:
    """Soft-thresholded SVD completion; `lambda_` and `rank_` are the validation's choice."""

    name: str = "softimpute"
    seed: int = 0
    max_iter: int = 100       # iterations per lambda at most
    n_lambdas: int = 15
    val_fraction: float = 0.1
    tol: float = 1e-4
    lambda_: float | None = field(default=None, repr=False)
    rank_: int | None = field(default=None, repr=False)

    def fit(self, Y, observed, metadata=None):
        return self

    def impute(self, Y, observed, metadata=None):
        Y = np.asarray(Y, dtype=np.float64)
        observed = np.asarray(observed, dtype=bool)
        rng = np.random.default_rng(self.seed)
        X = np.where(observed, np.nan_to_num(Y), 0.0)
        cnt = observed.sum(0)
        mu = np.divide(X.sum(0), cnt, out=np.zeros(X.shape[1]), where=cnt > 0)
        Xc = np.where(observed, X - mu, 0.0)

        nz = np.flatnonzero(observed & (X > 0))
        val = np.zeros(X.size, dtype=bool)
        val[rng.choice(nz, size=max(1, int(self.val_fraction * nz.size)), replace=False) if nz.size >= 10 else []] = True
        val = val.reshape(X.shape)
        train = observed & ~val
        top = float(np.linalg.norm(np.where(train, Xc, 0.0), 2)) if min(X.shape) <= EXACT_SVD else \
            float(_top_singular(np.where(train, Xc, 0.0), rng))
        lams = top * np.geomspace(0.9, 0.01, self.n_lambdas)

        best = {"err": np.inf, "i": 0 if val.any() else len(lams) - 1}

        def score(i: int, Z: np.ndarray, rank: int) -> bool:
            if not val.any():
                return False
            pred = np.maximum(Z[val] + np.broadcast_to(mu, X.shape)[val], 0.0)
            err = float(((pred - X[val]) ** 2).mean())
            if err < best["err"]:
                best.update(err=err, i=i, rank=rank)
            # validation error is U-shaped along the path: two worse lambdas in a row end it, which
            # also spares the high-rank (slow) end of the path on wide tables
            return i - best["i"] >= 2

        _path(Xc, train, lams, self.max_iter, self.tol, rng, score)
        chosen = lams[: best["i"] + 1]
        Z, rank = _path(Xc, observed, chosen, self.max_iter, self.tol, rng)
        self.lambda_, self.rank_ = float(chosen[-1]), rank
        return keep_observed(Y, observed, np.maximum(Z + mu, 0.0))


def _top_singular(A: np.ndarray, rng: np.random.Generator, iters: int = 30) -> float:
    v = rng.standard_normal(A.shape[1])
    for _ in range(iters):
        v = A.T @ (A @ v)
        v /= np.linalg.norm(v)
    return float(np.linalg.norm(A @ v))
