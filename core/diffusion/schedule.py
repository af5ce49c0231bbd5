"""Cosine-schedule Gaussian diffusion (T = 1000, epsilon prediction) with respaced samplers.

Timesteps are 0-based indices t = 0..T-1 into `alpha_bar`; the model is always told the original
index, so a respaced sampler uses the network trained on the full schedule unchanged. A respaced
chain over a subsequence t_K > ... > t_1 uses the generalized (eta) DDIM update between its
consecutive alpha_bar values: eta = 1 is exactly the DDPM posterior of the respaced process
(Nichol & Dhariwal's respacing), eta = 0 the deterministic DDIM path.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from depmicro.core.errors import DepmicroError

FRACTIONS = (2, 3, 4, 20)


def cosine_alpha_bar(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """alpha_bar_t for t = 1..T of the cosine schedule, with betas clipped at max_beta as in iDDPM."""
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = np.array([min(1 - f(i + 1) / f(i), max_beta) for i in range(T)])
    return np.cumprod(1.0 - betas)


class Diffusion:
    def __init__(self, T: int = 1000):
        self.T = T
        self.alpha_bar = torch.tensor(cosine_alpha_bar(T), dtype=torch.float32)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps; `t` broadcasts against x0's leading dims."""
        ab = self.alpha_bar.to(x0.device)[t]
        while ab.dim() < x0.dim():
            ab = ab[..., None]
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def step(self, x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, eta: float, noise: torch.Tensor | None,
             clip: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One reverse step from t to t_prev (t_prev = -1 means to the clean sample).

        The predicted x0 is clipped to `clip` (the range of clean training latents): near t = T the
        cosine schedule's alpha_bar is ~0 and dividing by its root would amplify any error in eps.
        The step then uses the epsilon implied by the clipped x0, as iDDPM's clip_denoised does.
        """
        ab = self.alpha_bar[t].item()
        ab_prev = self.alpha_bar[t_prev].item() if t_prev >= 0 else 1.0
        x0 = (x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        if clip is not None:
            x0 = torch.maximum(torch.minimum(x0, clip[1]), clip[0])
            eps = (x_t - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        if t_prev < 0:
            return x0
        sigma = eta * math.sqrt(max((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev), 0.0))
        dir_coef = math.sqrt(max(1 - ab_prev - sigma**2, 0.0))
        out = math.sqrt(ab_prev) * x0 + dir_coef * eps
        if sigma > 0 and noise is not None:
            out = out + sigma * noise
        return out


def respaced(T: int, stride: int) -> list[int]:
    """Every `stride`-th timestep, always ending at T - 1 (pure noise) and including 0; descending."""
    if stride < 1:
        raise DepmicroError(f"sampling stride must be >= 1, not {stride}")
    ts = sorted(set(range(0, T, stride)) | {T - 1})
    return ts[::-1]


def adaptive_stride(base: int, ar_step: int, n_steps: int, cap: int = 20) -> int:
    """The adaptive rule: AR step k (0-based) uses stride base * 2^k, capped at `cap`.

    Earlier AR steps are generated from the least context and every later step conditions on
    them, so they get the finest schedule; later steps, with more clean context, get coarser ones.
    `base` is sampling_fraction (1 gives the full schedule for the first step).
    """
    return int(min(cap, max(1, base) * 2**ar_step)) if n_steps > 1 else int(max(1, base))


def schedule_for(mode: str, T: int, fraction: int, ar_step: int, n_steps: int) -> list[int]:
    """Descending timesteps that AR step `ar_step` of `n_steps` runs through."""
    if mode == "full":
        return respaced(T, 1)
    if mode == "fractional":
        return respaced(T, fraction)
    if mode == "adaptive":
        return respaced(T, adaptive_stride(fraction, ar_step, n_steps))
    raise DepmicroError(f"sampling must be full, fractional or adaptive, not {mode!r}")
