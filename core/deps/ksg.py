"""KSG mutual information (Kraskov et al. 2004, estimator 1) for all taxon pairs, batched in torch.

Why a second MI estimator: issue 3 asks that MI rank-agree with scikit-learn's
`mutual_info_regression(k=3)`, and the binned plug-in estimator (mi.py) does not. This module
reproduces sklearn's `_compute_mi_cc` pair for pair, including its preprocessing, so the two agree
to floating point when they see the same jitter:

- each column is divided by its standard deviation (no centring; a constant column is left as is);
- every value gets 1e-10 * max(1, mean|column|) * N(0, 1) noise, which breaks the ties between the
  many exact zeros. sklearn draws that noise per call from `RandomState(seed)`: first n normals for
  the feature x, then n for the target y. We draw the same two vectors once per seed and give every
  column the first as an x and the second as a y, so entry [i, j] (i < j, x = column j, y = column i)
  equals `mutual_info_regression(Y[:, [j]], Y[:, i], random_state=seed)`; [j, i] mirrors it;
- radius = the k-th Chebyshev distance (self excluded) in the joint space, made strict with
  nextafter(radius, 0); n_x, n_y = points within it in each marginal, self excluded;
- MI = psi(n) + psi(k) - <psi(n_x + 1)> - <psi(n_y + 1)>, clipped at 0.

The radius needs the joint distances, O(n^2) per pair: the x and y distance matrices are computed
once per block of columns, and each pair costs one elementwise max and one top-k, for as many pairs
at once as `memory_bytes` allows. The marginal counts come from sorted columns and searchsorted,
O(n log n); since the search bounds x_a -/+ r are rounded sums, each end is walked to where the
exact predicate |x_a - x_b| <= r changes, or rare boundary cases would break exact agreement.
The O(n^2) top-k is what a GPU would speed up; on a CPU it is about as fast as sklearn's KD-tree
loop (README, "Dependency statistics", from tests/bench/deps.py).

The jitter makes one sklearn seed a noisy reference (measured in the same README section). `repeats`
averages over seeds seed, seed + 1, ... for whoever wants a smoother estimate.
"""
from __future__ import annotations

import numpy as np

from depmicro.core.deps.device import torch_device
from depmicro.core.errors import DepmicroError


def sklearn_jitter(Y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(as x, as y): the scaled, jittered columns sklearn would build from `Y[:, [c]]` as feature and
    `Y[:, c]` as target when called with `random_state=seed` (same noise for every column)."""
    Y = np.asarray(Y, dtype=np.float64)
    n = Y.shape[0]
    std = np.nanstd(Y, axis=0)
    std = np.where(std < 10 * np.finfo(np.float64).eps, 1.0, std)  # sklearn's _handle_zeros_in_scale
    S = Y / std
    rs = np.random.RandomState(seed)
    ex = rs.standard_normal(size=(n, 1))[:, 0]
    ey = rs.standard_normal(size=n)
    amp = 1e-10 * np.maximum(1, np.mean(np.abs(S), axis=0))
    return S + amp[None, :] * ex[:, None], S + amp[None, :] * ey[:, None]


def _dist(v):
    """(P, n) -> (P, n, n) |v_a - v_b|, computed exactly as sklearn's Chebyshev metric does in 1-D."""
    return (v[:, :, None] - v[:, None, :]).abs_()


def _count_within(sorted_v, v, radius):
    """#{b : |v_a - v_b| <= radius_a} for every a, by binary search on the sorted values. The search
    bounds v_a -/+ r are rounded sums, so each end is then walked to where the exact predicate
    |v_a - v_b| <= r changes (one or two steps at most; the set is contiguous because rounded
    subtraction is monotone)."""
    import torch

    n = sorted_v.shape[-1]
    sv = sorted_v.expand(v.shape[0], n) if sorted_v.dim() == 1 else sorted_v
    sv = sv.contiguous()
    lo = torch.searchsorted(sv, (v - radius).contiguous(), right=False)
    hi = torch.searchsorted(sv, (v + radius).contiguous(), right=True)

    def inside(idx):
        ok = (idx >= 0) & (idx < n)
        got = sv.gather(-1, idx.clamp(0, n - 1))
        return ok & ((v - got).abs() <= radius)

    while True:
        grow_hi, shrink_hi = inside(hi), ~inside(hi - 1)
        grow_lo, shrink_lo = inside(lo - 1), ~inside(lo)
        if not (grow_hi.any() or shrink_hi.any() or grow_lo.any() or shrink_lo.any()):
            return (hi - lo).to(torch.float64)
        hi = hi + grow_hi.long() - (shrink_hi & ~grow_hi).long()
        lo = lo - grow_lo.long() + (shrink_lo & ~grow_lo).long()


def _ksg_from(d, x, y, sx, sy, k: int):
    """KSG MI of P pairs from their joint Chebyshev distances d (P, n, n, overwritten), the values
    x, y (P, n) and their sorted copies sx, sy ((n,) shared or (P, n))."""
    import torch
    from scipy.special import digamma

    n = d.shape[-1]
    d.diagonal(dim1=1, dim2=2).fill_(float("inf"))  # a point is not its own neighbour
    radius = d.topk(k, dim=-1, largest=False).values[..., -1]
    radius = torch.nextafter(radius, torch.zeros_like(radius))  # strictly inside the k-th neighbour
    nx = _count_within(sx, x, radius) - 1.0  # minus self
    ny = _count_within(sy, y, radius) - 1.0
    const = float(digamma(n) + digamma(k))
    mi = const - torch.special.digamma(nx + 1).mean(-1) - torch.special.digamma(ny + 1).mean(-1)
    return mi.clamp_(min=0.0)


def _check_k(k: int, n: int) -> None:
    if not 1 <= k < n:
        raise DepmicroError(f"KSG needs 1 <= k < n samples, got k={k}, n={n}")


def ksg_pairs(x, y, k: int = 3):
    """KSG MI (nats) of each row pair: x, y are (P, n) float64 tensors, already scaled and jittered."""
    import torch

    _check_k(k, x.shape[1])
    d = torch.maximum(_dist(x), _dist(y))
    return _ksg_from(d, x, y, torch.sort(x, -1).values, torch.sort(y, -1).values, k)


def ksg_mutual_information(Y: np.ndarray, k: int = 3, *, seed: int = 0, repeats: int = 1, device: str | None = None,
                           memory_bytes: int = 600_000_000) -> np.ndarray:
    """(D, D) symmetric KSG MI, zero diagonal, averaged over jitter seeds seed .. seed + repeats - 1.
    Y must be NaN-free (stats.py reads held-out NaN as 0 before calling this)."""
    import torch

    Y = np.asarray(Y, dtype=np.float64)
    n, D = Y.shape
    if repeats < 1:
        raise DepmicroError(f"mi_jitter_repeats must be >= 1, not {repeats}")
    dev = torch_device(device)
    _check_k(k, n)
    cols = max(1, int(memory_bytes // (3 * 8 * n * n)))  # a block of x distances, of y distances, one joint block
    mi = np.zeros((D, D))
    for r in range(repeats):
        ax, ay = sklearn_jitter(Y, seed + r)
        Ax = torch.as_tensor(ax.T.copy(), device=dev)  # (D, n): one row per column
        Ay = torch.as_tensor(ay.T.copy(), device=dev)
        Sx, Sy = torch.sort(Ax, -1).values, torch.sort(Ay, -1).values
        for b0 in range(0, D, cols):  # x = column j in [b0, b1)
            b1 = min(D, b0 + cols)
            DX = _dist(Ax[b0:b1])
            for a0 in range(0, b1 - 1, cols):  # y = column i in [a0, a1), i < j
                a1 = min(D, a0 + cols)
                DY = _dist(Ay[a0:a1])
                for j in range(max(b0, a0 + 1), b1):
                    m = min(a1, j) - a0  # pairs (a0 + 0 .. a0 + m - 1, j)
                    d = torch.maximum(DX[j - b0][None], DY[:m])
                    x = Ax[j].expand(m, n)
                    mi[a0:a0 + m, j] += _ksg_from(d, x, Ay[a0:a0 + m], Sx[j], Sy[a0:a0 + m], k).cpu().numpy()
                    del d
                del DY
            del DX
    mi = np.triu(mi, 1) / repeats
    return mi + mi.T
