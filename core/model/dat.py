"""The Dependency-Aware Transformer (Section IV-f/g) and the DepMicroDiff network around it.

Layout of one sequence, in microbe index order (the AR order lives in the per-token step ids):
[2 condition tokens][D clean tokens][D noisy tokens]. Condition tokens: the metadata embedding
(or a learned null token) and a summary of the observed latent m0^c (Eq. 2), optionally with the
row's unobserved relative mass. Every clean and noisy token carries its microbe's position
embedding and its own observed value/flag; noisy tokens also carry their own timestep embedding.
Attention is scaled_dot_product_attention under Algorithm 2 (`ar.step_attention`), never built
whole: condition tokens attend each other; clean tokens attend the condition tokens and the clean
tokens of their own block of `attn_block` microbes (`ar.context_attention`: cost D * block rather
than D^2 per layer, the same as Algorithm 2 when one block holds every microbe); noisy tokens attend
what Algorithm 2 lets them inside their own block (`ar.noisy_blocks`: the condition tokens, the block's
clean tokens and its noisy tokens), or, with one block, the noisy rows of Algorithm 2 themselves
(`ar.noisy_attention`). Masks are (B, 1, ., .) and broadcast over heads.

Blocks hold consecutive microbes in index order, or, with a `layout` (`model/layout.py`: correlated
microbes together), consecutive microbes of that permutation: the DAT then keeps its tokens in layout
order internally, and every caller still speaks in microbe indices.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn
import torch.nn.functional as F

from depmicro.core.model.ar import NoisyBlocks, block_size, context_attention, noisy_attention, noisy_blocks

N_COND = 2


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        hid = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hid), nn.GELU(), nn.Linear(hid, dim), nn.Dropout(dropout))

    def _qkv(self, x: torch.Tensor):
        B, L, C = x.shape
        return self.qkv(self.ln1(x)).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)

    def _finish(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        x = x + self.proj(a.transpose(1, 2).reshape(B, L, C))
        return x + self.mlp(self.ln2(x))

    def _attend(self, q, k, v, allow):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allow, dropout_p=self.dropout if self.training else 0.0)

    def context(self, x: torch.Tensor, allow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Condition + clean tokens: they never attend to noisy tokens, so their keys/values can be cached.

        `allow` is `DAT.context_mask`'s: blocks (B * n_blocks, 1, b, N_COND + b), or one whole mask."""
        q, k, v = self._qkv(x)
        B, h, L, d = q.shape
        if allow.shape[-2] == L:  # one block: a single pass under the whole context mask (`DAT.context_mask`)
            return self._finish(x, self._attend(q, k, v, allow)), k, v
        c, D = N_COND, L - N_COND
        b = allow.shape[-2]
        nb = allow.shape[0] // B
        a_cond = self._attend(q[:, :, :c], k[:, :, :c], v[:, :, :c], None)  # condition tokens see only each other
        a = self._attend(_blocks(q[:, :, c:], nb, b), _with_cond(k, nb, b), _with_cond(v, nb, b), allow)
        a = a.view(B, nb, h, b, d).transpose(1, 2).reshape(B, h, nb * b, d)[:, :, :D]
        return self._finish(x, torch.cat([a_cond, a], dim=2)), k, v

    def noisy(self, x: torch.Tensor, k_ctx: torch.Tensor, v_ctx: torch.Tensor, allow: torch.Tensor) -> torch.Tensor:
        """`k_ctx`/`v_ctx` are the cached context, or (`sampling_cache`) buffers that also hold room for
        the noisy tokens, written in place: a sampler's many denoising calls then never copy the context."""
        q, k, v = self._qkv(x)
        if isinstance(allow, NoisyBlocks):
            return self._finish(x, self._noisy_blocks(q, k, v, k_ctx, v_ctx, allow))
        if k_ctx.shape[2] == allow.shape[-1]:
            n = k_ctx.shape[2] - k.shape[2]
            k_ctx[:, :, n:], v_ctx[:, :, n:] = k, v
            return self._finish(x, self._attend(q, k_ctx, v_ctx, allow))
        return self._finish(x, self._attend(q, torch.cat([k_ctx, k], 2), torch.cat([v_ctx, v], 2), allow))


    def _noisy_blocks(self, q, k, v, k_ctx, v_ctx, nbm: NoisyBlocks) -> torch.Tensor:
        """Noisy tokens in per-block slots (`ar.noisy_blocks`): each attends the condition tokens, its
        block's clean tokens and the noisy tokens of its block; padding tokens the condition tokens only."""
        B, h, S, d = q.shape
        c, nb, b, sm = N_COND, nbm.n_blocks, nbm.b, nbm.s_max
        flat = nbm.valid.reshape(-1)

        def to_slots(t: torch.Tensor) -> torch.Tensor:  # (B, h, S, d) -> (B * nb, h, s_max, d)
            vals = t.transpose(1, 2).reshape(B * S, h, d)[flat]
            out = t.new_zeros(B * nb * sm, h, d).index_copy(0, nbm.slot, vals)
            return out.view(B * nb, sm, h, d).transpose(1, 2)

        n_ctx = c + nbm.n_taxa
        kc, vc = k_ctx[:, :, :n_ctx], v_ctx[:, :, :n_ctx]
        kk = torch.cat([_with_cond(kc, nb, b), to_slots(k)], dim=2)
        vv = torch.cat([_with_cond(vc, nb, b), to_slots(v)], dim=2)
        a = self._attend(to_slots(q), kk, vv, nbm.mask)  # (B * nb, h, s_max, d)
        a = a.transpose(1, 2).reshape(B * nb * sm, h, d)[nbm.slot]
        only_cond = self._attend(q, kc[:, :, :c], vc[:, :, :c], None).transpose(1, 2).reshape(B * S, h, d)
        out = only_cond.index_copy(0, torch.nonzero(flat).squeeze(1), a)
        return out.view(B, S, h, d).transpose(1, 2)

def _blocks(t: torch.Tensor, nb: int, b: int) -> torch.Tensor:
    """(B, h, D, d) -> (B * nb, h, b, d): consecutive microbes in blocks of b, the last one zero-padded."""
    B, h, D, d = t.shape
    t = F.pad(t, (0, 0, 0, nb * b - D))
    return t.view(B, h, nb, b, d).transpose(1, 2).reshape(B * nb, h, b, d)


def _with_cond(t: torch.Tensor, nb: int, b: int) -> torch.Tensor:
    """Context keys/values (B, h, N_COND + D, d) -> per block [condition tokens][the block's microbes]."""
    B, h, _, d = t.shape
    c = N_COND
    tc = t[:, :, :c].unsqueeze(1).expand(B, nb, h, c, d).reshape(B * nb, h, c, d)
    return torch.cat([tc, _blocks(t[:, :, c:], nb, b)], dim=2)


def additive(allow: torch.Tensor) -> torch.Tensor:
    """A boolean may-attend mask as SDPA's additive float mask (0 / -inf), built once per forward
    and shared by every layer: the CPU kernels take it markedly faster than a boolean mask."""
    return torch.zeros(allow.shape, dtype=torch.float32, device=allow.device).masked_fill_(~allow, float("-inf"))


class DAT(nn.Module):
    def __init__(self, n_taxa: int, latent_dim: int, *, hidden: int, layers: int, heads: int, mlp_ratio: float,
                 dropout: float = 0.0, meta_dim: int = 0, residual_condition: bool = True,
                 alpha_bar: torch.Tensor | None = None, attn_block: int = 0, layout: bool = False):
        super().__init__()
        self.attn_block = attn_block  # clean tokens attend within blocks of this many microbes (0: one block)
        self.alpha_bar = alpha_bar  # set for an x0-parameterized epsilon head (not a parameter: the schedule)
        D, k, H = n_taxa, latent_dim, hidden
        self.D, self.k, self.H = D, k, H
        self.residual_condition = residual_condition
        self.pos = nn.Parameter(torch.randn(D, H) * 0.02)
        self.kind = nn.Parameter(torch.randn(2, H) * 0.02)  # clean, noisy
        self.clean_in = nn.Linear(k, H)
        self.noisy_in = nn.Linear(k, H)
        self.hint_in = nn.Linear(k, H)  # the encoder's latent of the masked profile at this microbe (the m-latent)
        self.value_in = nn.Linear(2, H)
        self.time_mlp = nn.Sequential(nn.Linear(H, H), nn.SiLU(), nn.Linear(H, H))
        self.meta_proj = nn.Linear(meta_dim, H) if meta_dim > 0 else None
        self.null_meta = nn.Parameter(torch.randn(H) * 0.02)
        n_extra = 3 if residual_condition else 0
        self.obs_summary = nn.Sequential(nn.Linear(D * (k + 1) + n_extra, H), nn.SiLU(), nn.Linear(H, H))
        self.blocks = nn.ModuleList(Block(H, heads, mlp_ratio, dropout) for _ in range(layers))
        self.ln_out = nn.LayerNorm(H)
        self.out = nn.Linear(H, k)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        # the block layout (set_layout, from the training view); a buffer, so bundles carry it (None: index order)
        self.register_buffer("layout", torch.arange(D) if layout else None)

    def set_layout(self, perm: Sequence[int] | torch.Tensor) -> None:
        """Microbe perm[i] sits at token position i; blocks are consecutive positions."""
        perm = torch.as_tensor(perm, dtype=torch.long)
        if not torch.equal(torch.sort(perm).values, torch.arange(self.D)):
            raise ValueError(f"a block layout must be a permutation of the {self.D} microbes")
        with torch.no_grad():
            self.layout.copy_(perm)

    def _laid(self, t: torch.Tensor) -> torch.Tensor:
        """(B, D, ...) in microbe order -> token (layout) order."""
        return t if self.layout is None else t[:, self.layout]

    def _positions(self, idx: torch.Tensor) -> torch.Tensor:
        """Microbe indices -> token positions."""
        return idx if self.layout is None else torch.argsort(self.layout)[idx]

    def condition(self, z_obs: torch.Tensor, flag: torch.Tensor, residual: torch.Tensor | None,
                  meta: torch.Tensor | None, has_meta: torch.Tensor | None) -> torch.Tensor:
        """(B, 2, H): metadata token (null where absent or switched off) and observed-latent summary."""
        B = z_obs.shape[0]
        f = flag.float()
        feats = [(z_obs * f[..., None]).reshape(B, -1), f]  # m0^c = (1 - m) * m0, Eq. 2
        if self.residual_condition:
            feats.append(residual)
        summary = self.obs_summary(torch.cat(feats, dim=-1))
        meta_tok = self.null_meta.expand(B, -1)
        if self.meta_proj is not None and meta is not None:
            hm = has_meta.float()[:, None]
            meta_tok = hm * self.meta_proj(meta) + (1 - hm) * meta_tok
        return torch.stack([meta_tok, summary], dim=1)

    def encode_context(self, z_clean: torch.Tensor, x_obs: torch.Tensor, flag: torch.Tensor, cond: torch.Tensor,
                       allow_ctx: torch.Tensor) -> tuple[torch.Tensor, list]:
        """Run the condition and clean tokens through every block; returns per-microbe value
        embeddings and the per-layer keys/values the noisy tokens attend to (a KV cache)."""
        z_clean, x_obs, f = self._laid(z_clean), self._laid(x_obs), self._laid(flag).float()
        pos = self.pos if self.layout is None else self.pos[self.layout]
        val = self.value_in(torch.stack([x_obs * f, f], dim=-1))  # (B, D, H), token order
        x = torch.cat([cond, self.clean_in(z_clean) + pos + self.kind[0] + val], dim=1)
        cache = []
        for blk in self.blocks:
            x, k, v = blk.context(x, allow_ctx)
            cache.append((k, v))
        return val, cache

    def denoise(self, val: torch.Tensor, cache: list, z_noisy: torch.Tensor, t: torch.Tensor, noisy_idx: torch.Tensor,
                allow_noisy: torch.Tensor, hint: torch.Tensor, return_x0: bool = False) -> torch.Tensor:
        """Epsilon (B, S, k) for the noisy tokens of microbes `noisy_idx` against a cached context.

        `hint` (B, S, k) is the VAE encoder's latent of the masked profile at each noisy token's
        microbe: the m-latent that Section IV-a names the initial input of the diffusion.
        `return_x0` (x0 head only) returns the head's x0 proposal itself: at t = T - 1, where the
        input carries no information on x0, that is the network's estimate of E[x0 | condition].
        """
        gi = self._positions(noisy_idx)[..., None].expand(-1, -1, self.H)
        temb = self.time_mlp(timestep_embedding(t, self.H))
        x = (self.noisy_in(z_noisy) + self.hint_in(hint) + self.pos[noisy_idx] + self.kind[1]
             + torch.gather(val, 1, gi) + temb)
        for blk, (k, v) in zip(self.blocks, cache):
            x = blk.noisy(x, k, v, allow_noisy)
        out = self.out(self.ln_out(x))
        if self.alpha_bar is None or return_x0:
            if return_x0 and self.alpha_bar is None:
                raise ValueError("return_x0 needs the x0-parameterized head")
            return out
        # x0-parameterized head: the network proposes x0, and returns the epsilon that x0 implies for
        # x_t. The loss stays on epsilon; near t = T, where the implied x0 of a direct eps head is the
        # eps error amplified by 1/sqrt(alpha_bar), this falls back to the zero-initialized proposal.
        ab = self.alpha_bar.to(out.device)[t][..., None]
        return (z_noisy - ab.sqrt() * out) / (1 - ab).clamp(min=1e-8).sqrt()

    def forward(self, z_clean: torch.Tensor, z_noisy: torch.Tensor, t: torch.Tensor, *, x_obs: torch.Tensor,
                flag: torch.Tensor, step: torch.Tensor, cond: torch.Tensor, dep: torch.Tensor | None, mode: str,
                noisy_idx: torch.Tensor, noisy_valid: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
        """Predict epsilon (B, S, k) for the noisy tokens of microbes `noisy_idx` (B, S).

        The sequence is [cond][D clean][S noisy] under `step_attention`; only target microbes need
        a noisy token, so S is the largest number of targets in the batch, padding masked out.
        Computed as context pass + noisy pass, which equals one pass over the whole sequence
        because context rows of the mask never open onto noisy columns.
        """
        val, cache = self.encode_context(z_clean, x_obs, flag, cond, self.context_mask(step))
        return self.denoise(val, cache, z_noisy, t, noisy_idx, self.noisy_mask(step, dep, mode, noisy_idx, noisy_valid), hint)

    def context_mask(self, step: torch.Tensor) -> torch.Tensor:
        """Additive mask for `Block.context`: per block (B * n_blocks, 1, b, N_COND + b); when one block
        holds every microbe, the whole context's (B, 1, N_COND + D, N_COND + D), so that narrow tables
        take one attention call, as before blocks existed (and give the same floats)."""
        allow = context_attention(self._laid(step), N_COND, self.attn_block)
        if allow.shape[0] == step.shape[0]:
            c = N_COND
            top = torch.zeros(allow.shape[0], 1, c, allow.shape[-1], dtype=torch.bool, device=allow.device)
            top[..., :c] = True  # condition tokens see only each other
            allow = torch.cat([top, allow], dim=2)
        return additive(allow)

    def noisy_mask(self, step: torch.Tensor, dep: torch.Tensor | None, mode: str, noisy_idx: torch.Tensor,
                   noisy_valid: torch.Tensor) -> torch.Tensor | NoisyBlocks:
        """Additive mask for `Block.noisy`: the noisy rows of Algorithm 2 (B, 1, S, L) when one block holds
        every microbe (the same floats as before blocks existed), else per block (`ar.noisy_blocks`)."""
        if self.layout is not None:
            step, noisy_idx = self._laid(step), self._positions(noisy_idx)
            dep = None if dep is None else dep.to(self.layout.device)[self.layout][:, self.layout]
        if block_size(self.D, self.attn_block) >= self.D:
            return additive(noisy_attention(step, N_COND, dep, mode, noisy_idx, noisy_valid))
        blocks = noisy_blocks(step, N_COND, dep, mode, noisy_idx, noisy_valid, self.attn_block)
        return replace(blocks, mask=additive(blocks.mask))


def sampling_cache(cache: list, n_noisy: int) -> list:
    """The context KV cache with room for `n_noisy` noisy tokens after it (no-grad sampling only)."""
    out = []
    for k, v in cache:
        B, h, n, d = k.shape
        kb, vb = k.new_empty(B, h, n + n_noisy, d), v.new_empty(B, h, n + n_noisy, d)
        kb[:, :, :n], vb[:, :, :n] = k, v
        out.append((kb, vb))
    return out


def residual_features(Y: torch.Tensor, flag: torch.Tensor) -> torch.Tensor:
    """The row's relative mass not accounted for by its observed entries (from observed entries only).

    Each nonempty normalized row satisfies sum(10^Y - 1) = 100, so this is the total percentage held
    by the missing entries: legitimate under the protocol, but an artifact of it (see ModelConfig).
    """
    f = flag.float()
    rel = (torch.pow(10.0, Y * f) - 1).sum(-1)
    res = (100.0 - rel).clamp(0, 100) / 100.0
    n_missing = (1 - f).sum(-1).clamp(min=1)
    even = torch.log10(1 + 100 * res / n_missing) / 2  # the value each missing entry would have if they shared it evenly
    return torch.stack([res, torch.log10(1 + 100 * res) / 2, even], dim=-1)
