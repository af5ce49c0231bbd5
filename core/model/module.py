"""The DepMicroDiff model: the VAE and DAT networks, the latent scaling, the Dep matrix and AR order,
and imputation (mean estimate, draws, uncertainty). What training updates (core/train/), bundles
save and load (model/bundle.py), and the user-facing DepMicroDiffImputer (model/imputer.py) wraps
with the Imputer protocol's `fit`. The diffusion loss and AR sampler are in core/diffusion/.

The layers, as in scvi-tools: this module (networks + inference) <- core/train (the training plan:
VAE phase, DAT trainer, `fit` under the held-out protocol) <- model/imputer.py (the user API). Each
imports only the layers below it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from depmicro.core.data.projection import project_missing_mass
from depmicro.core.diffusion.sampler import sample_batch
from depmicro.core.diffusion.schedule import Diffusion
from depmicro.core.errors import DepmicroError
from depmicro.core.imputer import keep_observed
from depmicro.core.model.config import ModelConfig
from depmicro.core.model.dat import DAT, residual_features
from depmicro.core.model.memory import plan_rows
from depmicro.core.model.metadata import MetadataEncoder
from depmicro.core.model.vae import TokenVAE

INFER_BATCH = 256


@dataclass
class LatentStats:
    """How clean latents are scaled for diffusion (mean, one std) and the range the sampler clips
    to (lo, hi); saved in a bundle's normalization.json and in training checkpoints."""

    mean: np.ndarray
    std: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def to_json(self) -> dict:
        return {"latent_mean": [float(x) for x in self.mean], "latent_std": [float(x) for x in self.std],
                "latent_lo": [float(x) for x in self.lo], "latent_hi": [float(x) for x in self.hi]}

    @classmethod
    def from_json(cls, d: dict) -> "LatentStats":
        return cls(*(np.asarray(d[f"latent_{k}"], dtype=np.float32) for k in ("mean", "std", "lo", "hi")))


class DepMicroDiff:
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
            "vae": TokenVAE.from_config(n_taxa, cfg),
            "dat": DAT(n_taxa, cfg.latent_dim, hidden=cfg.hidden_dim, layers=cfg.n_layers, heads=cfg.n_heads,
                       mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout, meta_dim=meta_dim,
                       residual_condition=cfg.residual_condition,
                       alpha_bar=self.diffusion.alpha_bar if cfg.eps_head == "x0" else None, attn_block=cfg.attn_block,
                       layout=cfg.attn_layout != "index"),
        })
        self.device = torch.device("cpu")
        self._meta_encoder = None
        self.infer_rows: int | None = None  # rows per imputation batch, set by a trainer under a memory cap

    # --- helpers -------------------------------------------------------------------------------
    @property
    def vae(self) -> TokenVAE:
        return self.net["vae"]

    @property
    def dat(self) -> DAT:
        return self.net["dat"]

    @property
    def latent_stats(self) -> LatentStats:
        return LatentStats(self.latent_mean, self.latent_std, self.latent_lo, self.latent_hi)

    @latent_stats.setter
    def latent_stats(self, stats: LatentStats) -> None:
        self.latent_mean, self.latent_std, self.latent_lo, self.latent_hi = stats.mean, stats.std, stats.lo, stats.hi

    def to(self, device: torch.device | str) -> "DepMicroDiff":
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    def meta_vectors(self, metadata: Sequence[str | None] | None, n: int) -> tuple[np.ndarray | None, np.ndarray]:
        """Encoded metadata (n, E) and a has-metadata flag; None when switched off or never trained with it."""
        if not self.cfg.use_metadata or self.meta_dim == 0 or metadata is None or not any(metadata):
            return None, np.zeros(n, dtype=bool)
        if self._meta_encoder is None:
            self._meta_encoder = MetadataEncoder(self.cfg.metadata_model)
        return self._meta_encoder.encode(list(metadata))

    def norm(self, mu: torch.Tensor) -> torch.Tensor:
        m = torch.as_tensor(self.latent_mean, device=mu.device)
        s = torch.as_tensor(self.latent_std, device=mu.device)
        return (mu - m) / s

    def denorm(self, z: torch.Tensor) -> torch.Tensor:
        m = torch.as_tensor(self.latent_mean, device=z.device)
        s = torch.as_tensor(self.latent_std, device=z.device)
        return z * s + m

    def dep_tensor(self) -> torch.Tensor | None:
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

    def condition(self, y, cond_flag, meta, has):
        with torch.no_grad():  # the VAE is trained first and stays frozen while the DAT learns
            mu_c, _ = self.vae.encode(y, cond_flag)
            z_c = self.norm(mu_c)
        res = residual_features(y, cond_flag) if self.cfg.residual_condition else None
        return z_c, self.dat.condition(z_c, cond_flag, res, meta, has)

    # --- imputation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encoder_impute(self, Y: np.ndarray, observed: np.ndarray) -> np.ndarray:
        """The VAE alone: decode the encoder's m-latent of the masked profile, no diffusion.

        Why: with residual diffusion and a zero-initialized x0 head, an untrained DAT reproduces exactly
        this estimate, so it is the reference the DAT has to beat (tests/bench/dat_epochs.py)."""
        Y, observed = np.asarray(Y, dtype=np.float64), np.asarray(observed, dtype=bool)
        self.net.eval()
        return keep_observed(Y, observed, self.vae.estimate(Y, observed, INFER_BATCH))

    def _check_input(self, Y: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Y = np.asarray(Y, dtype=np.float64)
        observed = np.asarray(observed, dtype=bool)
        if Y.shape != observed.shape or Y.shape[1] != self.D:
            raise DepmicroError(f"data shape {Y.shape} / mask {observed.shape} do not fit a model of {self.D} taxa")
        return Y, observed

    def _run(self, Y: np.ndarray, observed: np.ndarray, metadata, gen: torch.Generator | None, mean: bool) -> np.ndarray:
        """One pass over the rows in INFER_BATCH chunks: a draw, or the mean estimate."""
        meta, has = self.meta_vectors(metadata, len(Y))
        self.net.eval()
        yv = np.where(observed, np.nan_to_num(Y), 0.0).astype(np.float32)
        # INFER_BATCH unless cfg.max_memory caps it; the trainer plans once, before its allocations
        rows = self.infer_rows or plan_rows(self.cfg, Y, observed, INFER_BATCH)[1]
        out = []
        for i in range(0, len(Y), rows):
            sl = slice(i, i + rows)
            y = torch.as_tensor(yv[sl], device=self.device)
            m = torch.as_tensor(observed[sl], device=self.device)
            mt = None if meta is None else torch.as_tensor(meta[sl], device=self.device)
            ht = torch.as_tensor(has[sl], device=self.device)
            out.append(sample_batch(self, y, m, mt, ht, gen, mean=mean).cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    def sample(self, Y: np.ndarray, observed: np.ndarray, n: int, metadata: Sequence[str | None] | None = None,
               seed: int | None = None) -> np.ndarray:
        """`n` AR-diffusion draws (n, N, D) of every entry, observed entries kept as given."""
        Y, observed = self._check_input(Y, observed)
        gen = torch.Generator(device="cpu").manual_seed(self.cfg.seed if seed is None else seed)
        return np.stack([keep_observed(Y, observed, self._run(Y, observed, metadata, gen, mean=False)) for _ in range(n)])

    def impute(self, Y: np.ndarray, observed: np.ndarray, metadata: Sequence[str | None] | None = None,
               seed: int | None = None) -> np.ndarray:
        """Fill every entry with observed == False by cfg.estimate; observed entries come back unchanged.

        mean: the network's E[x0 | condition] (one call per AR step, deterministic); median: the median
        of cfg.n_impute_samples draws; sample: one draw. PCC/RMSE/MAE reward the posterior mean, and a
        draw adds the posterior's variance to the error, so validation and test use cfg.estimate."""
        Y, observed = self._check_input(Y, observed)
        est = self.cfg.estimate
        if est == "mean":
            filled = self._run(Y, observed, metadata, None, mean=True)
        else:
            draws = self.sample(Y, observed, self.cfg.n_impute_samples if est == "median" else 1, metadata, seed)
            filled = np.median(draws, axis=0)
        filled = keep_observed(Y, observed, filled)
        if self.cfg.mass_projection:
            filled = project_missing_mass(Y, observed, filled)
        return filled

    def uncertainty(self, Y: np.ndarray, observed: np.ndarray, metadata: Sequence[str | None] | None = None,
                    n: int | None = None, seed: int | None = None) -> np.ndarray:
        """Per-entry standard deviation over `n` (default cfg.n_impute_samples, at least 2) draws; 0 where observed.

        The draws are folded in one at a time (Welford), so memory stays at two (N, D) arrays whatever `n` is:
        stacking them would hold n of them (13.6 MB each on a 1,000 x 1,700 table). Same draws as `sample`."""
        Y, observed = self._check_input(Y, observed)
        gen = torch.Generator(device="cpu").manual_seed(self.cfg.seed if seed is None else seed)
        mean, m2 = np.zeros(Y.shape), np.zeros(Y.shape)
        n = max(2, n or self.cfg.n_impute_samples)
        for k in range(1, n + 1):
            x = keep_observed(Y, observed, self._run(Y, observed, metadata, gen, mean=False))
            delta = x - mean
            mean += delta / k
            m2 += delta * (x - mean)
        return np.where(observed, 0.0, np.sqrt(m2 / n))
