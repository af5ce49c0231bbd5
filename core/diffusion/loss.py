"""The training loss of AR latent diffusion: epsilon prediction on re-masked observed entries,
every AR step at once with its own timestep, Min-SNR-weighted (the paper's base strategy)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from depmicro.core.model.ar import gather_index, train_steps
from depmicro.core.model.vae import corrupt

if TYPE_CHECKING:
    from depmicro.core.model.module import DepMicroDiff


def epsilon_loss(imp: DepMicroDiff, y: torch.Tensor, obs: torch.Tensor, meta: torch.Tensor | None, has: torch.Tensor | None,
         rng: np.random.Generator, target: np.ndarray | None = None, t_fixed: int | None = None) -> torch.Tensor:
    """Epsilon-prediction loss on CSDI-style re-masked observed entries, all AR steps at once,
    each step with its own timestep (the paper's base strategy).

    Diagnostics: `target` (a subset of `obs`) fixes which entries are denoised instead of drawing
    them (a held-out denoising loss); `t_fixed` puts every target in one AR step at that timestep.
    At t_fixed = T - 1 the input is pure noise and, with the x0 head and the default weights,
    the loss is the mean squared error of the predicted x0: how well the DAT regresses the
    missing latents, against the encoder's estimate (x0 = 0) before training."""
    cfg, dev = imp.cfg, y.device
    obs_np = obs.cpu().numpy()
    target_np = corrupt(obs_np, y.cpu().numpy(), cfg.train_mask_ratio, rng) if target is None else np.asarray(target, dtype=bool) & obs_np
    target = torch.as_tensor(target_np, device=dev)
    cond = obs & ~target
    y = y * obs.float()
    with torch.no_grad():
        mu_full, _ = imp.vae.encode(y, obs, ctx_m=cond)
        z0 = imp.norm(mu_full)
    z_c, cond_tok = imp.condition(y, cond, meta, has)
    steps = target_np.astype(np.int64) if t_fixed is not None else train_steps(target_np, imp.rank, cfg.ar_decay, rng)
    step = torch.as_tensor(steps, device=dev)
    idx_np, valid_np = gather_index(target_np)
    idx, valid = torch.as_tensor(idx_np, device=dev), torch.as_tensor(valid_np, device=dev)
    if t_fixed is not None:
        t = torch.full(idx.shape, int(t_fixed), device=dev, dtype=torch.long)
    else:
        t_step = torch.as_tensor(rng.integers(0, cfg.timesteps, size=(y.shape[0], imp.D + 1)), device=dev)
        t = torch.gather(t_step, 1, torch.gather(step, 1, idx))  # each AR step its own timestep
    gi = idx[..., None].expand(-1, -1, z0.shape[-1])
    hint = torch.gather(z_c, 1, gi)
    x0 = torch.gather(z0, 1, gi) - (hint if cfg.residual_diffusion else 0.0)
    noise = torch.randn_like(x0)
    z_noisy = imp.diffusion.q_sample(x0, t, noise)
    z_clean = z_c * cond.float()[..., None] + z0 * target.float()[..., None]  # earlier steps' targets seen clean
    # the DAT's own masks (blocked context, noisy rows only): never the (L, L) reference of ar.step_attention
    val, cache = imp.dat.encode_context(z_clean, y, cond, cond_tok, imp.dat.context_mask(step))
    allow_noisy = imp.dat.noisy_mask(step, imp.dep_tensor(), cfg.dep_mask_mode, idx, valid)
    eps = imp.dat.denoise(val, cache, z_noisy, t, idx, allow_noisy, hint)
    per_tok = ((eps.float() - noise) ** 2).mean(-1)
    if cfg.min_snr > 0:  # Min-SNR-g / truncated-SNR weighting of the eps loss
        ab = imp.diffusion.alpha_bar.to(dev)[t]
        snr = ab / (1 - ab).clamp(min=1e-8)
        w = torch.clamp(snr, min=min(cfg.snr_floor, cfg.min_snr), max=cfg.min_snr)
        per_tok = per_tok * w / snr.clamp(min=1e-8)
    vf = valid.float()
    loss = (per_tok * vf).sum() / vf.sum().clamp(min=1)
    if (cfg.x0_loss > 0 or cfg.x0_value_loss > 0) and t_fixed is None and imp.dat.alpha_bar is not None:
        # the mean estimate's own regression: x0 from a zero input at t = T - 1 (what impute(estimate=mean) runs),
        # sharing the context pass; the eps loss alone reaches t near T rarely and weights it by 1/SNR-clamps
        t_top = torch.full(idx.shape, cfg.timesteps - 1, device=dev, dtype=torch.long)
        x0_hat = imp.dat.denoise(val, cache, torch.zeros_like(x0), t_top, idx, allow_noisy, hint, return_x0=True)
        if cfg.x0_loss > 0:
            loss = loss + cfg.x0_loss * (((x0_hat.float() - x0) ** 2).mean(-1) * vf).sum() / vf.sum().clamp(min=1)
        if cfg.x0_value_loss > 0:
            # scored where the metric is: a latent error the decoder ignores costs nothing here, one it
            # amplifies costs what it does to the value (the VAE is frozen; only the DAT learns from this)
            z_hat = x0_hat.float() + (hint if cfg.residual_diffusion else 0.0)
            v_hat = imp.vae.decode(imp.denorm(z_hat), cols=idx, partner_pred=imp.vae.gate_input(y, cond))
            v_err = (v_hat - torch.gather(y, 1, idx)) ** 2
            loss = loss + cfg.x0_value_loss * (v_err * vf).sum() / vf.sum().clamp(min=1)
    return loss
