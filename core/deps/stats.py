"""Dependency statistics for the Dep mask (MODEL.md section 3), for all taxon pairs at once.

Why closed form: a study thresholds the same raw F and MI matrices in every trial, and the naive
route (one statsmodels OLS pair per ordered pair, one k-NN MI estimate per pair) costs minutes to
hours at D = 1695. Everything here is a handful of D x D matrix products, so all pairs cost about
as much as a few pairs did, on CPU or (torch) GPU.

Directional F (Granger, lag L, samples in file order or ordered by a metadata column). For the
ordered pair j -> i: target y = Y[L:, i], restricted regressors [1, x = Y[:-L, i]], full
[1, x, z = Y[:-L, j]]. With centred cross products S, the partial regression gives
    RSS_r = S_yy - S_xy^2 / S_xx,   RSS_r - RSS_f = (S_zy - S_xz S_xy / S_xx)^2 / (S_zz - S_xz^2 / S_xx)
    F = (RSS_r - RSS_f) / (RSS_f / (m - 3)),  m = n - L,  p = P(F(1, m - 3) > F),
which is exactly statsmodels' `compare_f_test` of the two OLS fits. All S are entries of
Lc^T Lc and Lc^T Tc (Lc, Tc the centred lagged and target blocks), so every pair comes from two
matrix products. A constant column (or one that is collinear with the target's own lag) adds
nothing: F = 0, p = 1, where statsmodels would divide 0 by 0.

Mutual information: plug-in estimate on a discretisation that gives zero its own bin, with the
Miller-Madow bias correction. Why this and not KSG (scikit-learn's estimator): microbiome columns
are mostly exact zeros, and a k-NN estimator sees those as a pile of ties that it must break with
jitter, while "absent vs present" is precisely the signal a sparse profile carries. Bin 0 holds
the zeros; the nonzero values of each column go to round(nnz^(1/3)) (at most `mi_bins`)
equal-frequency bins (by rank, ties sharing a bin), so sparse taxa are not spread over cells they
cannot fill. The joint counts of all pairs are one product H^T H of the one-hot code matrix,
so MI for all pairs costs one (D*K)^2 matmul (K = 1 + the most bins any column uses), done in
column blocks to bound memory. Miller-Madow (`mi_bias_correction`, on by default) subtracts the
first-order plug-in bias (K_ab - K_a - K_b + 1) / (2n). Without it, independent pairs score about
0.05-0.1 nats at n = 300, so a fixed MI threshold would mean different things at different n and
sparsity. It costs about 0.04 of rank agreement with KSG.
Agreement with `mutual_info_regression(k=3)` (tests/bench/deps.py, 300 random pairs, 20 sklearn
seeds): Spearman 0.69 / 0.75 / 0.87 against one sklearn run on COAD / STAD / HNSC, and 0.81 / 0.87 / 0.94
against the 20-seed mean. The reference itself is noisy: sklearn jitters every exact zero, and one
sklearn seed against another agrees at only 0.71 / 0.73 / 0.85. Against the mean of the other 19
seeds it agrees at 0.82 / 0.80 / 0.90, which is the most any estimator can reach against one run unless it
replays that run's jitter. The remaining gap to the seed mean on COAD (the least sparse set) is a real
difference. KSG's digamma small-count terms largely ignore a moderate co-absence pattern (two taxa
absent in the same samples), which the zero bin counts in full.
Where agreement with sklearn is what matters, `DepSettings(mi_estimator="ksg")` (CLI
`--mi-estimator ksg`, core/deps_ksg.py) computes sklearn's own KSG for all pairs, batched in torch,
with sklearn's scaling and jitter: with the same jitter seed it equals `mutual_info_regression`
pair for pair (200 random COAD pairs: max |difference| < 2e-15 nats, Spearman 1.0; also for
2- and 4-seed means on both sides). `mi_jitter_repeats` averages over seeds, but that does not
remove the jitter's effect: at different seeds, "Spearman >= 0.9 with sklearn" holds only for means over
many seeds on both sides (two 10-seed means: 0.93 on COAD), so the jitter, not the estimator, sets the
ceiling. KSG costs O(n^2) per pair (all 5565 COAD pairs, n = 561: 8.9 s per seed on 2 idle cores, 43-60 s
on loaded ones, under 1.1 GB resident), against sklearn's own KD-tree loop, O(n log n) per pair,
extrapolated to 16-17 s for the same pairs (speedup 0.4-1.8, tests/bench/deps.py). Batching buys
exactness and a GPU path, not CPU speed. So it is an option for review and for the D ~ 100 TCMA sets, not for D = 1695, and it has
no permutation test.
Negative values are clipped to 0.

Permutation p-values: the marginals are invariant under a row permutation, so one permutation of
the sample axis of one copy of H gives a null joint table for every pair at once; the Python loop
runs over permutations only, and only the upper triangle is computed (half the cost).
p = (1 + #{null >= observed}) / (1 + P), the same for [i, j] and [j, i].

Missing values (NaN): the training view holds out test/validation entries as NaN (MODEL.md
section 3: statistics never see ground truth). NaN is treated as 0, i.e. unobserved, the same as a
zero of a sparse profile, which is itself "not seen" (absent or undetected). This keeps every pair
on the same complete design, so F is an exact OLS F on a fixed matrix (and equals statsmodels on
it) and MI needs no per-pair sample sizes. The cost: held-out entries were nonzero, so the view is
slightly sparser than the truth; that attenuates statistics equally in every trial of a study and
cannot leak the held-out values, which are never read.
"""
from __future__ import annotations

import numbers
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

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
    mi_estimator: str = "binned"  # "binned" (plug-in, fast) or "ksg" (sklearn's k=3 estimator, core/deps_ksg.py)
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


def _torch_device(device: str | None):
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(device)
    except RuntimeError:
        raise DepmicroError(f"unknown torch device {device!r}") from None


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


# --- F ---------------------------------------------------------------------------------------

def f_statistics(Y: np.ndarray, lag: int = 1, device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """F and p for all ordered pairs: [i, j] tests whether Y[:-lag, j] improves the prediction of
    Y[lag:, i] beyond Y[:-lag, i]. Y must be NaN-free and already in sample order."""
    import torch
    from scipy.special import fdtrc

    n, D = Y.shape
    m = n - lag
    df = m - 3
    if df < 1:
        raise DepmicroError(f"too few samples for lag-{lag} F-statistics: {n} samples leave {df} residual degrees of freedom")
    dev = _torch_device(device)
    Yt = torch.as_tensor(Y, dtype=torch.float64, device=dev)
    L, T = Yt[:-lag], Yt[lag:]
    Lc, Tc = L - L.mean(0), T - T.mean(0)
    CLL = Lc.T @ Lc  # [a, b] = sum_t L_a L_b
    CLT = Lc.T @ Tc  # [a, b] = sum_t L_a T_b
    syy = (Tc * Tc).sum(0)
    sxx = torch.diagonal(CLL)
    sxy = torch.diagonal(CLT)
    scale = float(np.abs(Y).max()) if Y.size else 0.0
    tiny = m * (1e-12 * max(scale, 1e-300)) ** 2  # a centred sum of squares this small is a constant
    xok = sxx > tiny
    sxx_safe = torch.where(xok, sxx, torch.ones_like(sxx))
    rss_r = syy - torch.where(xok, sxy * sxy / sxx_safe, torch.zeros_like(sxy))  # (D,) per target i
    # pair [i, j]: x = L_i, z = L_j, y = T_i
    sxz = CLL
    b = torch.where(xok[:, None], sxz / sxx_safe[:, None], torch.zeros_like(sxz))  # z regressed on x
    szz = sxx[None, :].expand(D, D)
    szz_p = szz - b * sxz
    szy_p = CLT.T - b * sxy[:, None]
    zok = (szz > tiny) & (szz_p > 1e-10 * szz)  # z not constant and not collinear with x
    red = torch.where(zok, szy_p * szy_p / torch.where(zok, szz_p, torch.ones_like(szz_p)), torch.zeros_like(szz_p))
    red = torch.minimum(torch.clamp(red, min=0.0), rss_r[:, None].clamp(min=0.0))
    rss_f = rss_r[:, None] - red
    yok = syy > tiny
    floor = 1e-13 * syy[:, None]  # a perfect fit gives a huge finite F rather than inf/NaN
    F = torch.where(yok[:, None] & zok, red / (torch.maximum(rss_f, floor) / df), torch.zeros_like(red))
    F.fill_diagonal_(0.0)
    F = F.cpu().numpy()
    const = np.ptp(Y, axis=0) == 0  # whole column constant: F = 0 whichever side it is on
    F[const, :] = 0.0
    F[:, const] = 0.0
    p = fdtrc(1, df, F)
    p[F == 0] = 1.0
    np.fill_diagonal(p, 1.0)
    return F, p


# --- MI --------------------------------------------------------------------------------------

def bin_codes(Y: np.ndarray, bins: int) -> np.ndarray:
    """(n, D) int codes: 0 for an exact zero, 1..B_i for equal-frequency bins of the nonzero values of
    column i (by min-rank, so equal values always share a bin), B_i = round(nnz_i^(1/3)) capped at
    `bins`: the cube-root rule, so a taxon seen in 8 samples gets 2 bins and one seen in 500 gets 8."""
    from scipy.stats import rankdata

    Y = np.asarray(Y, dtype=np.float64)
    nz = Y != 0
    keyed = np.where(nz, Y, -np.inf)  # zeros rank first, whatever the sign of the data
    rank = rankdata(keyed, method="min", axis=0) - 1  # 0-based
    n_zero = (~nz).sum(0)
    nnz = nz.sum(0)
    B = np.clip(np.round(np.cbrt(nnz)), 1, bins).astype(np.int64)
    codes = 1 + np.floor((rank - n_zero) * B / np.maximum(nnz, 1)).astype(np.int64)
    codes = np.clip(codes, 1, B)
    return np.where(nz, codes, 0)


def _onehot(codes: np.ndarray, K: int, dev):
    import torch

    n, D = codes.shape
    idx = torch.as_tensor(codes + K * np.arange(D)[None, :], device=dev)
    H = torch.zeros((n, D * K), dtype=torch.float32, device=dev)
    H.scatter_(1, idx, 1.0)
    return H


def _block_rows(D: int, K: int, budget: int = 16_000_000) -> int:
    return max(1, min(D, budget // max(1, D * K * K)))


def _joint_terms(Ha, Hb, D: int, K: int, correction: bool, upper: bool = False):
    """Sum over cells of N log N (and the number of occupied cells) for every pair, block by block.
    With `upper`, only pairs j >= i (in blocks) are computed; the rest of the matrix is left 0."""
    import torch

    n = Ha.shape[0]
    assert n < 2**24  # counts stay exact integers in float32
    rows = _block_rows(D, K)
    out = torch.zeros((D, D), dtype=torch.float64, device=Ha.device)
    occ = torch.zeros((D, D), dtype=torch.float64, device=Ha.device) if correction else None
    for s in range(0, D, rows):
        e = min(D, s + rows)
        c0 = s if upper else 0
        N = (Ha[:, s * K : e * K].T @ Hb[:, c0 * K :]).reshape(e - s, K, D - c0, K)
        N64 = N.to(torch.float64)  # MI is a small difference of large N log N sums
        out[s:e, c0:] = torch.xlogy(N64, N64).sum(dim=(1, 3))
        if correction:
            occ[s:e, c0:] = (N > 0).sum(dim=(1, 3)).to(torch.float64)
    return out, occ


def _marginal_terms(H, D: int, K: int):
    import torch

    Nm = H.sum(0).reshape(D, K).to(torch.float64)
    return torch.xlogy(Nm, Nm).sum(1), (Nm > 0).sum(1).to(torch.float64)


def _mi_from(joint, occ, marg, kmarg, n: int, correction: bool):
    import torch

    mi = (joint - marg[:, None] - marg[None, :]) / n + float(np.log(n))
    if correction:
        mi = mi - (occ - kmarg[:, None] - kmarg[None, :] + 1.0) / (2.0 * n)
    mi = torch.clamp(mi, min=0.0)
    mi.fill_diagonal_(0.0)
    return mi


def mutual_information(Y: np.ndarray, bins: int = 4, *, correction: bool = True, n_permutations: int = 0,
                       seed: int = 0, device: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """MI (nats) for all pairs and, with n_permutations > 0, permutation p-values (module docstring)."""
    import torch

    n, D = Y.shape
    codes = bin_codes(Y, bins)
    K = int(codes.max()) + 1  # bins actually used: sparse data needs fewer, and cost grows with K^2
    dev = _torch_device(device)
    H = _onehot(codes, K, dev)
    marg, kmarg = _marginal_terms(H, D, K)
    joint, occ = _joint_terms(H, H, D, K, correction)
    mi = _mi_from(joint, occ, marg, kmarg, n, correction)
    pval = None
    if n_permutations > 0:
        gen = np.random.default_rng(seed)
        exceed = torch.zeros((D, D), dtype=torch.float64, device=dev)
        upper = torch.triu(torch.ones((D, D), dtype=torch.bool, device=dev), diagonal=1)
        for _ in range(n_permutations):  # one null draw per unordered pair and permutation
            perm = torch.as_tensor(gen.permutation(n), device=dev)
            j, o = _joint_terms(H, H[perm], D, K, correction, upper=True)
            null = _mi_from(j, o, marg, kmarg, n, correction)
            exceed += ((null >= mi) & upper).to(torch.float64)
        exceed = exceed + exceed.T
        pval = ((1.0 + exceed) / (1.0 + n_permutations)).cpu().numpy()
        np.fill_diagonal(pval, 1.0)
    mi = mi.cpu().numpy()
    return (mi + mi.T) / 2.0, pval  # exact symmetry (float rounding of the two block orders)


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
        from depmicro.core.deps.ksg import ksg_mutual_information

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
