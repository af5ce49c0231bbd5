"""Mutual information for all taxon pairs: a plug-in estimate on a discretisation that gives zero
its own bin, with the Miller-Madow bias correction, and permutation p-values.

Why this and not KSG (scikit-learn's estimator, ksg.py): microbiome columns are mostly exact zeros,
and a k-NN estimator sees those as a pile of ties that it must break with jitter, while "absent vs
present" is precisely the signal a sparse profile carries. Bin 0 holds the zeros; the nonzero
values of each column go to round(nnz^(1/3)) (at most `mi_bins`) equal-frequency bins (by rank,
ties sharing a bin), so sparse taxa are not spread over cells they cannot fill. The joint counts
of all pairs are one product H^T H of the one-hot code matrix, so MI for all pairs costs one
(D*K)^2 matmul (K = 1 + the most bins any column uses), done in column blocks to bound memory.
Miller-Madow (`mi_bias_correction`, on by default) subtracts the first-order plug-in bias
(K_ab - K_a - K_b + 1) / (2n): without it independent pairs score well above 0 at small n, so a
fixed MI threshold would mean different things at different n and sparsity. Where rank agreement
with sklearn is what matters, use the KSG estimator (`DepSettings(mi_estimator="ksg")`); how far
the two agree, and why sklearn's own jitter caps that agreement, is measured in README
("Dependency statistics") by tests/bench/deps.py. Negative values are clipped to 0.

Permutation p-values: the marginals are invariant under a row permutation, so one permutation of
the sample axis of one copy of H gives a null joint table for every pair at once; the Python loop
runs over permutations only, and only the upper triangle is computed (half the cost).
p = (1 + #{null >= observed}) / (1 + P), the same for [i, j] and [j, i].
"""
from __future__ import annotations

import numpy as np

from depmicro.core.deps.device import torch_device


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
    dev = torch_device(device)
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
