"""DepMicroDiff behind the foundation's `Imputer` interface: the network, its training loss and
its AR-diffusion sampler. Training loops live in train.py; files in checkpoint.py."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from depmicro.core.model.config import ModelConfig
from depmicro.core.model.dat import DAT, N_COND, residual_features
from depmicro.core.diffusion.schedule import Diffusion, schedule_for
from depmicro.core.imputer import keep_observed
from depmicro.core.model.ar import gather_index, infer_steps, step_attention, train_steps
from depmicro.core.model.vae import TokenVAE, corrupt

INFER_BATCH = 256


class DepMicroDiffImputer:
    """Fills missing entries of normalized profiles by latent AR-diffusion.

    `dep` is the Dep matrix (bool (D, D), row may attend column) used inside AR steps, `rank` the
    AR order (position of each microbe); both come from the training view only.
    """

    name = "depmicrodiff"

    def __init__(self, cfg: ModelConfig, n_taxa: int, var_names: Sequence[str] | None = None, meta_dim: int = 0,
                 dep: np.ndarray | None = None, rank: np.ndarray | None = None):
        self.cfg = cfg
        self.D = n_taxa
        self.var_names = list(var_names) if var_names is not None else [str(i) for i in range(n_taxa)]
        self.meta_dim = meta_dim
        self.dep = None if dep is None else np.asarray(dep, dtype=bool)
        self.rank = np.arange(n_taxa) if rank is None else np.asarray(rank, dtype=np.int64)
        self.latent_mean = np.zeros(cfg.latent_dim, dtype=np.float32)
        self.latent_std = np.ones(cfg.latent_dim, dtype=np.float32)
        self.latent_lo = np.full(cfg.latent_dim, -6.0, dtype=np.float32)  # range of normalized clean latents
        self.latent_hi = np.full(cfg.latent_dim, 6.0, dtype=np.float32)
        torch.manual_seed(cfg.seed)
        self.diffusion = Diffusion(cfg.timesteps)
        self.net = nn.ModuleDict({
            "vae": TokenVAE(n_taxa, cfg.latent_dim, cfg.vae_hidden),
            "dat": DAT(n_taxa, cfg.latent_dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.mlp_ratio, cfg.dropout,
                       meta_dim, cfg.residual_condition, self.diffusion.alpha_bar if cfg.eps_head == "x0" else None),
        })
        self.device = torch.device("cpu")
        self._meta_encoder = None

    # --- helpers -------------------------------------------------------------------------------
    @property
    def vae(self) -> TokenVAE:
        return self.net["vae"]

    @property
    def dat(self) -> DAT:
        return self.net["dat"]

    def to(self, device: torch.device | str) -> "DepMicroDiffImputer":
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    def meta_vectors(self, metadata: Sequence[str | None] | None, n: int) -> tuple[np.ndarray | None, np.ndarray]:
        """Encoded metadata (n, E) and a has-metadata flag; None when switched off or never trained with it."""
        if not self.cfg.use_metadata or self.meta_dim == 0 or metadata is None or not any(metadata):
            return None, np.zeros(n, dtype=bool)
        if self._meta_encoder is None:
            from depmicro.core.model.metadata import MetadataEncoder

            self._meta_encoder = MetadataEncoder(self.cfg.metadata_model)
        return self._meta_encoder.encode(list(metadata))

    def _norm(self, mu: torch.Tensor) -> torch.Tensor:
        m = torch.as_tensor(self.latent_mean, device=mu.device)
        s = torch.as_tensor(self.latent_std, device=mu.device)
        return (mu - m) / s

    def _denorm(self, z: torch.Tensor) -> torch.Tensor:
        m = torch.as_tensor(self.latent_mean, device=z.device)
        s = torch.as_tensor(self.latent_std, device=z.device)
        return z * s + m

    def _dep_tensor(self) -> torch.Tensor | None:
        if self.dep is None or self.cfg.dep_mask_mode == "off":
            return None
        return torch.as_tensor(self.dep, dtype=torch.bool, device=self.device)

    @torch.no_grad()
    def set_latent_stats(self, Y: np.ndarray, observed: np.ndarray) -> None:
        """Scale latents to unit variance (as latent diffusion does) from encodings of the training view."""
        mus = []
        for i in range(0, len(Y), INFER_BATCH):
            y = torch.as_tensor(np.nan_to_num(Y[i : i + INFER_BATCH]), dtype=torch.float32, device=self.device)
            m = torch.as_tensor(observed[i : i + INFER_BATCH], device=self.device)
            mu, _ = self.vae.encode(y, m)
            mus.append(mu[m].cpu())
        mu = torch.cat(mus).numpy()
        # one scale for all dimensions: per-dimension scaling would blow up the near-constant
        # dimensions the decoder ignores and make the diffusion spend its capacity on them
        self.latent_mean = mu.mean(0).astype(np.float32)
        self.latent_std = np.full(mu.shape[1], max(float((mu - mu.mean(0)).std()), 1e-3), dtype=np.float32)
        zn = (mu - self.latent_mean) / self.latent_std
        self.latent_lo, self.latent_hi = zn.min(0).astype(np.float32), zn.max(0).astype(np.float32)
        if self.cfg.residual_diffusion:  # the diffused quantity is a difference of two such latents
            span = self.latent_hi - self.latent_lo
            self.latent_lo, self.latent_hi = -span, span

    def _condition(self, y, cond_flag, meta, has):
        with torch.no_grad():  # the VAE is trained first and stays frozen while the DAT learns
            mu_c, _ = self.vae.encode(y, cond_flag)
            z_c = self._norm(mu_c)
        res = residual_features(y, cond_flag) if self.cfg.residual_condition else None
        return z_c, self.dat.condition(z_c, cond_flag, res, meta, has)

    # --- training --------------------------------------------------------------------------------
    def loss(self, y: torch.Tensor, obs: torch.Tensor, meta: torch.Tensor | None, has: torch.Tensor | None,
             rng: np.random.Generator, target: np.ndarray | None = None, t_fixed: int | None = None) -> torch.Tensor:
        """Epsilon-prediction loss on CSDI-style re-masked observed entries, all AR steps at once,
        each step with its own timestep (the paper's base strategy).

        Diagnostics: `target` (a subset of `obs`) fixes which entries are denoised instead of drawing
        them (a held-out denoising loss); `t_fixed` puts every target in one AR step at that timestep.
        At t_fixed = T - 1 the input is pure noise and, with the x0 head and the default weights,
        the loss is the mean squared error of the predicted x0: how well the DAT regresses the
        missing latents, against the encoder's estimate (x0 = 0) before training."""
        cfg, dev = self.cfg, y.device
        obs_np = obs.cpu().numpy()
        target_np = corrupt(obs_np, y.cpu().numpy(), cfg.train_mask_ratio, rng) if target is None else np.asarray(target, dtype=bool) & obs_np
        target = torch.as_tensor(target_np, device=dev)
        cond = obs & ~target
        y = y * obs.float()
        with torch.no_grad():
            mu_full, _ = self.vae.encode(y, obs, ctx_m=cond)
            z0 = self._norm(mu_full)
        z_c, cond_tok = self._condition(y, cond, meta, has)
        steps = target_np.astype(np.int64) if t_fixed is not None else train_steps(target_np, self.rank, cfg.ar_decay, rng)
        step = torch.as_tensor(steps, device=dev)
        idx_np, valid_np = gather_index(target_np)
        idx, valid = torch.as_tensor(idx_np, device=dev), torch.as_tensor(valid_np, device=dev)
        if t_fixed is not None:
            t = torch.full(idx.shape, int(t_fixed), device=dev, dtype=torch.long)
        else:
            t_step = torch.as_tensor(rng.integers(0, cfg.timesteps, size=(y.shape[0], self.D + 1)), device=dev)
            t = torch.gather(t_step, 1, torch.gather(step, 1, idx))  # each AR step its own timestep
        gi = idx[..., None].expand(-1, -1, z0.shape[-1])
        hint = torch.gather(z_c, 1, gi)
        x0 = torch.gather(z0, 1, gi) - (hint if cfg.residual_diffusion else 0.0)
        noise = torch.randn_like(x0)
        z_noisy = self.diffusion.q_sample(x0, t, noise)
        z_clean = z_c * cond.float()[..., None] + z0 * target.float()[..., None]  # earlier steps' targets seen clean
        eps = self.dat(z_clean, z_noisy, t, y, cond, step, cond_tok, self._dep_tensor(), cfg.dep_mask_mode, idx, valid, hint)
        per_tok = ((eps.float() - noise) ** 2).mean(-1)
        if cfg.min_snr > 0:  # Min-SNR-g / truncated-SNR weighting of the eps loss
            ab = self.diffusion.alpha_bar.to(dev)[t]
            snr = ab / (1 - ab).clamp(min=1e-8)
            w = torch.clamp(snr, min=min(cfg.snr_floor, cfg.min_snr), max=cfg.min_snr)
            per_tok = per_tok * w / snr.clamp(min=1e-8)
        vf = valid.float()
        return (per_tok * vf).sum() / vf.sum().clamp(min=1)

    # --- sampling ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _sample_batch(self, y: torch.Tensor, obs: torch.Tensor, meta, has, gen: torch.Generator) -> torch.Tensor:
        cfg, dev = self.cfg, y.device
        y = y * obs.float()
        target = ~obs
        z_c, cond_tok = self._condition(y, obs, meta, has)
        K = cfg.infer_ar_steps
        step_np = infer_steps(target.cpu().numpy(), self.rank, K)
        step = torch.as_tensor(step_np, device=dev)
        dep = self._dep_tensor()
        z_gen = torch.zeros_like(z_c)
        for k in range(1, K + 1):
            if not (step_np == k).any():
                continue
            idx_np, valid_np = gather_index(step_np == k)  # only this step's noisy tokens: later ones cannot matter
            idx, valid = torch.as_tensor(idx_np, device=dev), torch.as_tensor(valid_np, device=dev)
            x = torch.randn((*idx.shape, z_c.shape[-1]), generator=gen).to(dev)
            z_clean = z_c * obs.float()[..., None] + z_gen * ((step > 0) & (step < k)).float()[..., None]
            allow = step_attention(step, N_COND, dep, cfg.dep_mask_mode, idx, valid)
            n_ctx = N_COND + self.D
            val, cache = self.dat.encode_context(z_clean, y, obs, cond_tok, allow[:, :, :n_ctx, :n_ctx])
            allow_noisy = allow[:, :, n_ctx:, :]
            gi = idx[..., None].expand(-1, -1, z_c.shape[-1])
            hint = torch.gather(z_c, 1, gi)
            clip = (torch.as_tensor(self.latent_lo, device=dev), torch.as_tensor(self.latent_hi, device=dev))
            ts = schedule_for(cfg.sampling, cfg.timesteps, cfg.sampling_fraction, k - 1, K)
            for i, t in enumerate(ts):
                t_prev = ts[i + 1] if i + 1 < len(ts) else -1
                t_tok = torch.full(idx.shape, t, device=dev, dtype=torch.long)
                eps = self.dat.denoise(val, cache, x, t_tok, idx, allow_noisy, hint).float()
                noise = torch.randn(x.shape, generator=gen).to(dev) if cfg.sampler_eta > 0 and t_prev >= 0 else None
                x = self.diffusion.step(x, eps, t, t_prev, cfg.sampler_eta, noise, clip)
            if cfg.residual_diffusion:
                x = x + hint
            upd = torch.zeros_like(z_gen).scatter_add(1, gi, x * valid.float()[..., None])  # padding adds 0
            z_gen = z_gen + upd
        return self.vae.decode(self._denorm(z_gen)).clamp(min=0)

    @torch.no_grad()
    def encoder_impute(self, Y: np.ndarray, observed: np.ndarray) -> np.ndarray:
        """The VAE alone: decode the encoder's m-latent of the masked profile, no diffusion.

        Why: with residual diffusion and a zero-initialized x0 head, an untrained DAT reproduces exactly
        this estimate, so it is the reference the DAT has to beat (tests/bench/dat_epochs.py)."""
        Y, observed = np.asarray(Y, dtype=np.float64), np.asarray(observed, dtype=bool)
        self.net.eval()
        yv = np.where(observed, np.nan_to_num(Y), 0.0).astype(np.float32)
        out = []
        for i in range(0, len(Y), INFER_BATCH):
            y = torch.as_tensor(yv[i : i + INFER_BATCH], device=self.device)
            m = torch.as_tensor(observed[i : i + INFER_BATCH], device=self.device)
            mu, _ = self.vae.encode(y * m.float(), m)
            out.append(self.vae.decode(mu).clamp(min=0).cpu().numpy())
        return keep_observed(Y, observed, np.concatenate(out).astype(np.float64))

    def impute(self, Y: np.ndarray, observed: np.ndarray, metadata: Sequence[str | None] | None = None,
               seed: int | None = None) -> np.ndarray:
        """Fill every entry with observed == False; observed entries come back unchanged."""
        Y = np.asarray(Y, dtype=np.float64)
        observed = np.asarray(observed, dtype=bool)
        if Y.shape != observed.shape or Y.shape[1] != self.D:
            from depmicro.core.errors import DepmicroError

            raise DepmicroError(f"data shape {Y.shape} / mask {observed.shape} do not fit a model of {self.D} taxa")
        meta, has = self.meta_vectors(metadata, len(Y))
        self.net.eval()
        gen = torch.Generator(device="cpu").manual_seed(self.cfg.seed if seed is None else seed)
        yv = np.where(observed, np.nan_to_num(Y), 0.0).astype(np.float32)
        draws = []
        for _ in range(self.cfg.n_impute_samples):
            out = []
            for i in range(0, len(Y), INFER_BATCH):
                sl = slice(i, i + INFER_BATCH)
                y = torch.as_tensor(yv[sl], device=self.device)
                m = torch.as_tensor(observed[sl], device=self.device)
                mt = None if meta is None else torch.as_tensor(meta[sl], device=self.device)
                ht = torch.as_tensor(has[sl], device=self.device)
                out.append(self._sample_batch(y, m, mt, ht, gen).cpu().numpy())
            draws.append(np.concatenate(out))
        filled = np.median(np.stack(draws), axis=0) if len(draws) > 1 else draws[0]
        return keep_observed(Y, observed, filled.astype(np.float64))

    def fit(self, Y: np.ndarray, observed: np.ndarray, metadata: Sequence[str | None] | None = None) -> "DepMicroDiffImputer":
        """Train on the observed entries only, for cfg.epochs (no validation split: see train.fit for that)."""
        from depmicro.core.train import train_on_view

        train_on_view(self, np.asarray(Y, dtype=np.float64), np.asarray(observed, dtype=bool), metadata)
        return self
