"""Directional (Granger) F-statistics for all ordered taxon pairs from two matrix products.

Lag L, samples in file order or ordered by a metadata column. For the ordered pair j -> i: target
y = Y[L:, i], restricted regressors [1, x = Y[:-L, i]], full [1, x, z = Y[:-L, j]]. With centred
cross products S, the partial regression gives
    RSS_r = S_yy - S_xy^2 / S_xx,   RSS_r - RSS_f = (S_zy - S_xz S_xy / S_xx)^2 / (S_zz - S_xz^2 / S_xx)
    F = (RSS_r - RSS_f) / (RSS_f / (m - 3)),  m = n - L,  p = P(F(1, m - 3) > F),
which is exactly statsmodels' `compare_f_test` of the two OLS fits. All S are entries of
Lc^T Lc and Lc^T Tc (Lc, Tc the centred lagged and target blocks), so every pair comes from two
matrix products. A constant column (or one that is collinear with the target's own lag) adds
nothing: F = 0, p = 1, where statsmodels would divide 0 by 0.
"""
from __future__ import annotations

import numpy as np

from depmicro.core.deps.device import torch_device
from depmicro.core.errors import DepmicroError


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
    dev = torch_device(device)
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
