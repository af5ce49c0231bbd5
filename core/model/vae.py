"""A VAE with one latent token per microbe (Section IV-d, Eq. 5-8).

The encoder reads a masked profile (values and observed flags). A shared MLP over the whole
profile gives a context vector, and each microbe's token is computed from its own value/flag, a
learned microbe embedding and that context, so token j is mostly "microbe j's value, in context".
The decoder is per token (z_j plus microbe embedding -> value j): decoding a generated token
never needs the other tokens, which is what imputation wants.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


class TokenVAE(nn.Module):
    def __init__(self, n_taxa: int, latent_dim: int = 4, hidden: int = 128, token_hidden: int = 32,
                 readout: bool = False, factor_rank: int = 0, partners: int = 0, standardize: bool = False,
                 partner_gate: bool = False):
        super().__init__()
        self.D, self.k = n_taxa, latent_dim
        # each microbe's values standardized inside the VAE (set_scale), decoded back to its own scale. Why: with raw
        # relative abundances the shared networks and the squared error serve the abundant microbes; on a wide table most
        # microbes are rare, and pcc_per_microbe weighs each alike
        self.standardize = standardize
        if standardize:
            self.register_buffer("value_mu", torch.zeros(n_taxa))
            self.register_buffer("value_sd", torch.ones(n_taxa))
        self.context = nn.Sequential(nn.Linear(2 * n_taxa, hidden), nn.SiLU(), nn.Linear(hidden, token_hidden))
        self.enc_embed = nn.Parameter(torch.randn(n_taxa, token_hidden) * 0.02)
        # a ridge low-rank factor model fitted per profile to the entries the encoder sees (factor_predict). Why: the
        # best classical imputer here (softimpute) is exactly that, and a pooled MLP context only approximates the
        # projection, whose weights depend on which entries are observed through a matrix inverse
        self.factor = nn.Parameter(torch.randn(n_taxa, factor_rank) * 0.1) if factor_rank else None
        self.factor_bias = nn.Parameter(torch.zeros(n_taxa)) if factor_rank else None
        self.factor_log_ridge = nn.Parameter(torch.zeros(())) if factor_rank else None
        # a linear regression of each microbe on its `partners` most correlated microbes (partner_predict). Why: a
        # factor model of rank r spans r directions; a wide table holds more pairwise structure than that (planted
        # pairs on kraken_like at 1,700 taxa: rank 64 scores 0.21, eight partners 0.43; docs/model-log.md section 24)
        k = min(partners, n_taxa - 1)
        self.partner_w = nn.Parameter(torch.zeros(n_taxa, k)) if k > 0 else None
        self.partner_miss = nn.Parameter(torch.zeros(n_taxa, k)) if k > 0 else None
        if k > 0:  # chosen from the training view by set_partners; buffers, so a bundle's state dict carries them
            self.register_buffer("partner_idx", torch.zeros(n_taxa, k, dtype=torch.long))
            self.register_buffer("partner_mu", torch.zeros(n_taxa))
            self.register_buffer("partner_sd", torch.ones(n_taxa))
        # a per-microbe gate between the decoded token and the partner regression, for the entries the encoder did not
        # see (decode). Why: on raw values past 800 taxa the encoder holds less than its own partner input (0.384 against
        # 0.427 test at 1,200 taxa; docs/model-log.md section 25): the decoder serves the abundant microbes and drops the
        # rare ones' partner signal, so the readout may take the regression directly where it predicts better
        self.partner_gate = nn.Parameter(torch.zeros(n_taxa)) if partner_gate and k > 0 else None
        self.enc_local = nn.Linear(2 + bool(factor_rank) + (k > 0), token_hidden)
        self.enc_out = nn.Sequential(nn.SiLU(), nn.Linear(token_hidden, token_hidden), nn.SiLU(), nn.Linear(token_hidden, 2 * latent_dim))
        # per-microbe linear readout of the context (zero at init: the additive path's tokens, bit for bit). Why: a
        # hidden microbe's token is otherwise MLP(context + embedding), where microbes can differ only through an added
        # vector; low-rank completion (softimpute) reads each microbe as its own linear function of a shared factor
        self.readout = nn.Parameter(torch.zeros(n_taxa, token_hidden, 2 * latent_dim)) if readout else None
        self.dec_embed = nn.Parameter(torch.randn(n_taxa, token_hidden) * 0.02)
        self.dec = nn.Sequential(nn.Linear(latent_dim, token_hidden), nn.SiLU(), nn.Linear(token_hidden, token_hidden), nn.SiLU(), nn.Linear(token_hidden, 1))

    @classmethod
    def from_config(cls, n_taxa: int, cfg) -> "TokenVAE":
        """The VAE a ModelConfig describes: the one place its fields reach the constructor (the model, the cached
        VAE phase and the encoder bench all build it here, so a new VAE field cannot reach one and miss another)."""
        return cls(n_taxa, cfg.latent_dim, cfg.vae_hidden, readout=cfg.vae_readout, factor_rank=cfg.vae_factor_rank,
                   partners=cfg.vae_partners, standardize=cfg.vae_standardize, partner_gate=cfg.vae_partner_gate)

    def set_scale(self, Y: np.ndarray, observed: np.ndarray) -> None:
        """The per-microbe mean and standard deviation of the observed training values (sd 1 where they do not vary)."""
        _, mu, sd = _observed_moments(Y, observed)
        with torch.no_grad():
            self.value_mu.copy_(torch.as_tensor(mu, dtype=self.value_mu.dtype))
            self.value_sd.copy_(torch.as_tensor(sd, dtype=self.value_sd.dtype))

    def inner(self, x):
        """Values as the VAE's networks see them: standardized per microbe with `standardize`, else as given (tensor or
        array, (..., D))."""
        if not self.standardize:
            return x
        if isinstance(x, np.ndarray):
            return (x - self.value_mu.numpy()) / self.value_sd.numpy()
        return (x - self.value_mu) / self.value_sd

    def fix_factors_to_pca(self, Y: np.ndarray, observed: np.ndarray, ridge: float = 0.003) -> None:
        """Set the factors to the principal axes of Y (unobserved entries at their column's observed mean), scaled by
        their standard deviations, and freeze them: factor_predict is then the Gaussian conditional mean under that
        covariance. A classical estimate, so an option reported apart from the learned factors (the ridge 0.003 was
        the better of 0.003 and 0.01 on the three TCMA sets' seed-0 validation masks)."""
        X = np.where(observed, np.nan_to_num(Y), 0.0)
        mean = X.sum(0) / np.maximum(observed.sum(0), 1)  # a column with nothing observed gets 0, without a warning
        F = np.where(observed, X, mean) - mean
        _, s, vt = np.linalg.svd(F, full_matrices=False)
        r = min(self.factor.shape[1], len(s))
        V = np.zeros(tuple(self.factor.shape))
        V[:, :r] = vt[:r].T * s[:r] / np.sqrt(max(len(F), 1))
        with torch.no_grad():
            self.factor.copy_(torch.as_tensor(V, dtype=self.factor.dtype))
            self.factor_bias.copy_(torch.as_tensor(mean, dtype=self.factor_bias.dtype))
            self.factor_log_ridge.fill_(float(np.log(ridge)))
        for p in (self.factor, self.factor_bias, self.factor_log_ridge):
            p.requires_grad_(False)

    def set_partners(self, Y: np.ndarray, observed: np.ndarray) -> None:
        """Each microbe's partners: the k others whose observed values correlate most with its own (|Pearson| over the
        rows where both are observed), and the observed means and standard deviations that standardize the inputs.
        Read from the training view once, before the VAE trains; the regression weights are then learned with it."""
        k = self.partner_idx.shape[1]
        corr, mu, sd = abs_correlation(Y, observed)
        np.fill_diagonal(corr, -1.0)
        idx = np.argsort(-corr, axis=1, kind="stable")[:, :k]
        with torch.no_grad():
            self.partner_idx.copy_(torch.as_tensor(idx, dtype=torch.long))
            self.partner_mu.copy_(torch.as_tensor(mu, dtype=self.partner_mu.dtype))
            self.partner_sd.copy_(torch.as_tensor(sd, dtype=self.partner_sd.dtype))

    def partner_predict(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, D): each microbe's value from its partners' standardized values where `m` has them (a partner
        not in `m` enters at its mean, plus a learned offset for being missing), read back on the microbe's scale."""
        m = m.float()
        z = (x - self.partner_mu) / self.partner_sd * m
        zp, mp = z[:, self.partner_idx], m[:, self.partner_idx]  # (B, D, k)
        lin = (zp * self.partner_w).sum(-1) + ((1.0 - mp) * self.partner_miss).sum(-1)
        return self.partner_mu + self.partner_sd * lin

    def factor_predict(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, D): each profile's ridge projection onto the learned factors, fitted to its entries in `m`
        (u = (V_m' V_m + lambda I)^-1 V_m' (x_m - b)), then read out for every microbe as V u + b.

        In float32 whatever the autocast: linalg.solve refuses a bfloat16 right-hand side beside a float32
        Gram matrix (GPU mixed precision), and a bfloat16 Gram matrix would be too coarse to solve."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            V, b = self.factor.float(), self.factor_bias.float()
            x, w = x.float(), m.float()
            eye = torch.eye(V.shape[1], dtype=V.dtype, device=V.device)
            gram = torch.einsum("bd,dr,ds->brs", w, V, V) + torch.exp(self.factor_log_ridge.float()) * eye
            u = torch.linalg.solve(gram, ((x - b) * w) @ V)
            return u @ V.T + b

    def encode(self, x: torch.Tensor, m: torch.Tensor, ctx_m: torch.Tensor | None = None,
               cols: torch.Tensor | None = None, factor_pred: torch.Tensor | None = None,
               partner_pred: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) values (read only where m) and flags -> mean, log-variance (B, D, k), or (B, len(cols), k).

        `ctx_m` computes the shared context from a smaller mask than the tokens' own: the clean
        latent of a training target is its visible value in the context its conditioning profile
        gives, so it differs from that profile's m-latent only through the value itself.
        `cols` computes the tokens of those microbes only; the context still reads the whole profile.
        `factor_pred` is factor_predict(x, ctx_m or m), when the caller has it already (the VAE loss
        regresses the same prediction: one ridge solve per profile instead of two); `partner_pred` likewise. Both are
        in the inner scale (inner()), as the loss computes them.
        """
        return self._encode(self.inner(x), m, ctx_m, cols, factor_pred, partner_pred)

    def _encode(self, x: torch.Tensor, m: torch.Tensor, ctx_m: torch.Tensor | None, cols: torch.Tensor | None,
                factor_pred: torch.Tensor | None, partner_pred: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        m = m.float()
        xm = x * m
        cm = m if ctx_m is None else ctx_m.float()
        ctx = self.context(torch.cat([x * cm, cm], dim=-1))  # (B, H)
        embed, readout = self.enc_embed, self.readout
        local = [xm, m]
        if self.factor is not None:
            local.append(self.factor_predict(x, cm) if factor_pred is None else factor_pred)
        if self.partner_w is not None:
            local.append(self.partner_predict(x, cm) if partner_pred is None else partner_pred)
        if cols is not None:
            local, embed = [a[:, cols] for a in local], embed[cols]
            readout = None if readout is None else readout[cols]
        h = self.enc_local(torch.stack(local, dim=-1)) + embed + ctx[:, None, :]
        out = self.enc_out(h)
        if readout is not None:
            out = out + torch.einsum("bh,dhk->bdk", ctx, readout)
        mu, logvar = out.chunk(2, dim=-1)
        return mu, logvar.clamp(-10, 10)

    @torch.no_grad()
    def estimate(self, Y: np.ndarray, observed: np.ndarray, rows: int = 256) -> np.ndarray:
        """(N, D) -> (N, D): the encoder's mean latent of each masked profile, decoded and clipped at 0, in batches
        of `rows`; observed entries are not kept here (the caller does). The DAT's floor: an untrained DAT
        reproduces exactly this estimate."""
        dev = next(self.parameters()).device
        yv = np.where(observed, np.nan_to_num(Y), 0.0).astype(np.float32)
        out = []
        for i in range(0, len(yv), rows):
            y = torch.as_tensor(yv[i : i + rows], device=dev)
            m = torch.as_tensor(np.asarray(observed[i : i + rows], dtype=bool), device=dev)
            mu, _ = self.encode(y * m.float(), m)
            out.append(self.decode(mu, partner_pred=self.gate_input(y, m)).clamp(min=0).cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    def gate_input(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor | None:
        """What decode's `partner_pred` takes for profiles (B, D) with observed flags `m`: the partner regression in the
        inner scale, or None without a gate."""
        if self.partner_gate is None:
            return None
        return self.partner_predict(self.inner(x * m.float()), m.float())

    def decode(self, z: torch.Tensor, cols: torch.Tensor | None = None,
               partner_pred: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D, k) -> (B, D) values; each token decoded on its own (`cols`: z holds those microbes' tokens).
        With a partner gate, `partner_pred` (gate_input, (B, D), all microbes) blends into every value: the caller
        keeps observed entries, so only the imputed ones carry it."""
        out = self._decode(z, cols)
        if self.partner_gate is not None and partner_pred is not None:
            out = self._gated(out, partner_pred, cols)
        if not self.standardize:
            return out
        mu, sd = (self.value_mu, self.value_sd) if cols is None else (self.value_mu[cols], self.value_sd[cols])
        return mu + sd * out

    def _gated(self, out: torch.Tensor, pp: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
        """Decoded values `out` (inner scale) blended with the partner prediction `pp` (B, D) by each microbe's gate;
        `cols` names out's microbes: (S,) shared by the batch, or (B, S) per profile."""
        g = self.partner_gate
        if cols is not None:
            g, pp = g[cols], (pp[:, cols] if cols.dim() == 1 else torch.gather(pp, 1, cols))
        return out + torch.sigmoid(g) * (pp - out)

    def _decode(self, z: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
        h = self.dec[0](z) + (self.dec_embed if cols is None else self.dec_embed[cols])
        for layer in list(self.dec)[1:]:
            h = layer(h)
        return h.squeeze(-1)

    def loss(self, x: torch.Tensor, m_in: torch.Tensor, m_loss: torch.Tensor, beta: float,
             cols: torch.Tensor | None = None, factor_visible_weight: float = 0.0) -> torch.Tensor:
        """Eq. 6-8 per sample: squared error on the observed entries (`m_loss`: a mask, or per-entry weights)
        + beta * KL, averaged over the batch.

        With `cols`, only those microbes' tokens are encoded and decoded, and their sums are scaled by
        D / len(cols): an unbiased estimate of the full loss whose per-token cost does not grow with D
        (on a 1,700-taxon table the per-token MLPs are nearly all of the VAE's step)."""
        x = self.inner(x)  # with standardize the loss is each microbe's error in its own standard deviations
        fp = self.factor_predict(x, m_in) if self.factor is not None else None
        pp = self.partner_predict(x, m_in) if self.partner_w is not None else None
        mu, logvar = self._encode(x, m_in, None, cols, fp, pp)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # Eq. 5
        xs, ms, scale = x, m_loss, 1.0
        if cols is not None:
            xs, ms, scale = x[:, cols], m_loss[:, cols], self.D / len(cols)
        out = self._decode(z, cols)
        if self.partner_gate is not None:  # the gate blends on the hidden entries only: on a visible one the decoder
            # reads the value itself, which would teach the gate to shut
            seen = m_in.bool() if cols is None else m_in.bool()[:, cols]
            out = torch.where(seen, out, self._gated(out, pp, cols))
        recon = ((out - xs) ** 2 * ms.float()).sum(-1)
        kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum((-1, -2))
        loss = scale * (recon + beta * kl)
        if self.factor is not None:  # the factor model's own regression, on the entries hidden from it (all D), and at
            # factor_visible_weight on those it was fitted to: that term asks the factors to span the profiles, as
            # principal axes do, not only to predict the hidden entries (docs/model-log.md section 12)
            w = ((m_loss.float() > 0) & ~m_in.bool()).float()
            if factor_visible_weight:
                w = w + factor_visible_weight * m_in.float()
            loss = loss + ((fp - x) ** 2 * w).sum(-1)
        if pp is not None:  # the partner regression's own loss on every observed entry: a microbe is never its own
            # partner, so its value is never among the inputs that predict it
            loss = loss + ((pp - x) ** 2 * (m_loss.float() > 0).float()).sum(-1)
        return loss.mean()


def _observed_moments(Y: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y with unobserved entries at 0, and each column's mean and sd over its observed entries (sd 1 where constant)."""
    obs = np.asarray(observed, dtype=bool)
    X = np.where(obs, np.nan_to_num(np.asarray(Y, dtype=np.float64)), 0.0)
    n = np.maximum(obs.sum(0), 1)
    mu = X.sum(0) / n
    sd = np.sqrt((np.where(obs, X - mu, 0.0) ** 2).sum(0) / n)
    return X, mu, np.where(sd > 0, sd, 1.0)


def abs_correlation(Y: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|Pearson| between microbes over the rows where both are observed (D, D), and the observed means and sds."""
    obs = np.asarray(observed, dtype=bool)
    X, mu, sd = _observed_moments(Y, obs)
    Z = np.where(obs, (X - mu) / sd, 0.0)
    both = obs.T.astype(np.float64) @ obs.astype(np.float64)
    return np.abs(Z.T @ Z) / np.maximum(both, 1), mu, sd


def corrupt(m: np.ndarray, Y: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Hide a random share (per sample ~ U(0.5, 1.5) * ratio) of the observed nonzero entries: CSDI-style
    training targets that look like the protocol's held-out entries (which are always nonzero)."""
    cand = m & (Y > 0)
    r = rng.uniform(0.5 * ratio, min(1.5 * ratio, 0.95), size=(m.shape[0], 1))
    hide = cand & (rng.random(m.shape) < r)
    return hide


def train_vae(vae: TokenVAE, sets: Sequence[tuple[np.ndarray, np.ndarray]], *, epochs: int, lr: float, beta: float,
              batch_size: int, mask_ratio: float, rng: np.random.Generator, device: torch.device,
              token_sample: int = 0, visible_weight: float = 1.0, factor_visible_weight: float = 0.0,
              ema_decay: float = 0.0) -> list[float]:
    """Fit the VAE on (Y, observed) pairs; the encoder input is randomly corrupted so it learns to
    encode profiles with entries missing, and the loss covers every observed entry (in expectation,
    when `token_sample` < D draws one subset of microbes per batch; at or above D, or 0, nothing is
    drawn, so narrow tables train exactly as without it).

    `visible_weight` < 1 weighs the entries the encoder saw below the hidden ones (as masked
    autoencoders and ReMasker do). Why: reconstructing a visible value from itself is easy and, at
    weight 1, is most of the loss, while imputation is the hidden entries alone; at 1 the loss
    mask is the observed mask, bit for bit as before.

    `ema_decay` > 0 keeps an exponential moving average of the weights over the call, started from the
    weights it was given, and ends with the VAE holding that average. Why: at a constant learning rate the
    encoder's held-out score moves by 0.03-0.05 from one epoch to the next (docs/model-log.md section 18),
    so the last step's weights are a draw from that spread; the average is not. At 0 nothing changes."""
    if epochs <= 0 or not sets:
        return []
    Y = np.concatenate([s[0] for s in sets]).astype(np.float32)
    M = np.concatenate([s[1] for s in sets]).astype(bool)
    Y = np.where(M, np.nan_to_num(Y), 0.0).astype(np.float32)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=1e-4)
    params = [p for p in vae.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params] if ema_decay > 0 else None
    losses = []
    vae.train()
    for _ in range(epochs):
        perm = rng.permutation(len(Y))
        tot = 0.0
        for i in range(0, len(Y), batch_size):
            idx = perm[i : i + batch_size]
            y, m = Y[idx], M[idx]
            hide = corrupt(m, y, mask_ratio, rng)
            m_in = m & ~hide
            m_loss = m if visible_weight == 1.0 else np.where(hide, 1.0, visible_weight * m).astype(np.float32)
            yt, mt, mi = (torch.from_numpy(a).to(device) for a in (y, m_loss, m_in))
            cols = None
            if 0 < token_sample < vae.D:
                cols = torch.from_numpy(np.sort(rng.choice(vae.D, token_sample, replace=False))).to(device)
            loss = vae.loss(yt, mi, mt, beta, cols, factor_visible_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            if ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - ema_decay)
            tot += loss.item() * len(idx)
        losses.append(tot / len(Y))
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    vae.eval()
    return losses
