"""The AR sampler: AR steps in the model's order; within a step, the reverse diffusion over the
timesteps `schedule_for` picks, with the clean tokens of earlier steps as context (Algorithm 2)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from depmicro.core.diffusion.schedule import schedule_for
from depmicro.core.model.ar import gather_index, infer_steps
from depmicro.core.model.dat import sampling_cache

if TYPE_CHECKING:
    from depmicro.core.model.module import DepMicroDiff


@torch.no_grad()
def sample_batch(imp: DepMicroDiff, y: torch.Tensor, obs: torch.Tensor, meta, has, gen: torch.Generator | None,
                 mean: bool = False) -> torch.Tensor:
    """One AR-diffusion draw for a batch, or with `mean` the point estimate: per AR step one network
    call at t = T - 1 from a zero input (the mean of the noise), whose x0 is the network's
    E[x0 | condition]; later AR steps condition on earlier steps' estimates. `mean` draws no
    random numbers, so it depends neither on a seed nor on the sampler settings."""
    cfg, dev = imp.cfg, y.device
    y = y * obs.float()
    target = ~obs
    z_c, cond_tok = imp.condition(y, obs, meta, has)
    K = cfg.infer_ar_steps
    step_np = infer_steps(target.cpu().numpy(), imp.rank, K)
    step = torch.as_tensor(step_np, device=dev)
    dep = imp.dep_tensor()
    z_gen = torch.zeros_like(z_c)
    for k in range(1, K + 1):
        if not (step_np == k).any():
            continue
        idx_np, valid_np = gather_index(step_np == k)  # only this step's noisy tokens: later ones cannot matter
        idx, valid = torch.as_tensor(idx_np, device=dev), torch.as_tensor(valid_np, device=dev)
        z_clean = z_c * obs.float()[..., None] + z_gen * ((step > 0) & (step < k)).float()[..., None]
        val, cache = imp.dat.encode_context(z_clean, y, obs, cond_tok, imp.dat.context_mask(step))
        cache = sampling_cache(cache, idx.shape[1])
        allow_noisy = imp.dat.noisy_mask(step, dep, cfg.dep_mask_mode, idx, valid)
        gi = idx[..., None].expand(-1, -1, z_c.shape[-1])
        hint = torch.gather(z_c, 1, gi)
        clip = (torch.as_tensor(imp.latent_lo, device=dev), torch.as_tensor(imp.latent_hi, device=dev))
        if mean:
            x = torch.zeros((*idx.shape, z_c.shape[-1]), device=dev)
            t_tok = torch.full(idx.shape, cfg.timesteps - 1, device=dev, dtype=torch.long)
            if imp.dat.alpha_bar is not None:
                x0 = imp.dat.denoise(val, cache, x, t_tok, idx, allow_noisy, hint, return_x0=True).float()
                x = torch.maximum(torch.minimum(x0, clip[1]), clip[0])
            else:
                eps = imp.dat.denoise(val, cache, x, t_tok, idx, allow_noisy, hint).float()
                x = imp.diffusion.step(x, eps, cfg.timesteps - 1, -1, 0.0, None, clip)
        else:
            x = torch.randn((*idx.shape, z_c.shape[-1]), generator=gen).to(dev)
            ts = schedule_for(cfg.sampling, cfg.timesteps, cfg.sampling_fraction, k - 1, K)
            for i, t in enumerate(ts):
                t_prev = ts[i + 1] if i + 1 < len(ts) else -1
                t_tok = torch.full(idx.shape, t, device=dev, dtype=torch.long)
                eps = imp.dat.denoise(val, cache, x, t_tok, idx, allow_noisy, hint).float()
                noise = torch.randn(x.shape, generator=gen).to(dev) if cfg.sampler_eta > 0 and t_prev >= 0 else None
                x = imp.diffusion.step(x, eps, t, t_prev, cfg.sampler_eta, noise, clip)
        if cfg.residual_diffusion:
            x = x + hint
        upd = torch.zeros_like(z_gen).scatter_add(1, gi, x * valid.float()[..., None])  # padding adds 0
        z_gen = z_gen + upd
    return imp.vae.decode(imp.denorm(z_gen), partner_pred=imp.vae.gate_input(y, obs)).clamp(min=0)
