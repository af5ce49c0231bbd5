"""Blocked attention for the noisy tokens (ar.noisy_blocks): exactly Algorithm 2's noisy rows with the
pairs across blocks closed, in training (DAT.forward) and in sampling (KV buffers with room)."""
from __future__ import annotations

import torch

from depmicro.core.model import dat as dat_mod
from depmicro.core.model.ar import gather_index, noisy_attention, noisy_blocks, step_attention
from depmicro.core.model.config import config_from_dict
from depmicro.core.model.dat import additive, sampling_cache
from depmicro.core.model.imputer import DepMicroDiffImputer

D, B, C, BLOCK = 11, 3, 2, 4
STEP = torch.tensor([[0, 1, 1, 2, 2, 0, 3, 0, 1, 2, 0],
                     [1, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0],
                     [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2]])


def _index():
    return (torch.as_tensor(a) for a in gather_index(STEP.numpy() > 0))


def _dep() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(D, D, generator=g) < 0.5


def _full_from_blocks(nbm, S: int) -> torch.Tensor:
    """The blocked layout scattered back onto noisy_attention's (B, S, C + D + S) columns."""
    out = torch.zeros(B, S, C + D + S, dtype=torch.bool)
    idx, valid = _index()
    rows, cols = torch.nonzero(valid, as_tuple=True)
    token_of_slot = {int(sl): (int(r), int(s)) for sl, r, s in zip(nbm.slot, rows, cols)}
    m = nbm.mask[:, 0].reshape(B * nbm.n_blocks * nbm.s_max, -1)
    for sl, (r, s) in token_of_slot.items():
        blk = sl // nbm.s_max % nbm.n_blocks
        out[r, s, :C] = m[sl, :C]
        for i in range(nbm.b):
            j = blk * nbm.b + i
            if j < D:
                out[r, s, C + j] = m[sl, C + i]
        for sl2, (r2, s2) in token_of_slot.items():
            if r2 == r and sl2 // nbm.s_max == sl // nbm.s_max:
                out[r, s, C + D + s2] = m[sl, C + nbm.b + sl2 % nbm.s_max]
    for r, s in zip(*torch.nonzero(~valid, as_tuple=True)):
        out[r, s, :C] = True  # padding tokens: the condition tokens only
    return out


def _same_block_noisy(idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    S = idx.shape[1]
    blk_q = idx // BLOCK
    clean = blk_q[:, :, None] == (torch.arange(D) // BLOCK)[None, None, :]
    noisy = blk_q[:, :, None] == blk_q[:, None, :]
    return torch.cat([torch.ones(B, S, C, dtype=torch.bool), clean, noisy], dim=2)


def test_noisy_blocks_are_algorithm2_rows_within_blocks():
    idx, valid = _index()
    for mode in ("paper", "restrict", "off"):
        full = noisy_attention(STEP, C, _dep(), mode, idx, valid)[:, 0]
        nbm = noisy_blocks(STEP, C, _dep(), mode, idx, valid, BLOCK)
        assert nbm.n_blocks == 3 and nbm.b == BLOCK
        expected = full & (_same_block_noisy(idx, valid) | ~valid[:, :, None])
        assert torch.equal(_full_from_blocks(nbm, idx.shape[1]), expected), mode
        assert not torch.equal(expected, full)  # the blocks did close pairs
        pad = nbm.n_blocks * nbm.b - D  # the last block's padding microbes are closed to every slot
        last = nbm.mask[:, 0].view(B, nbm.n_blocks, nbm.s_max, -1)[:, -1]
        assert pad > 0 and not last[..., C + nbm.b - pad : C + nbm.b].any()


def _imputer(block: int) -> DepMicroDiffImputer:
    cfg = config_from_dict(dict(latent_dim=2, vae_hidden=16, hidden_dim=16, n_layers=2, n_heads=2, timesteps=100,
                                use_metadata=False, attn_block=block))
    torch.manual_seed(0)
    imp = DepMicroDiffImputer(cfg, D)
    torch.nn.init.normal_(imp.dat.out.weight)
    return imp


def _inputs():
    g = torch.Generator().manual_seed(1)
    idx, valid = _index()
    k, S = 2, idx.shape[1]
    return dict(z_clean=torch.randn(B, D, k, generator=g), z_noisy=torch.randn(B, S, k, generator=g),
                t=torch.randint(0, 100, (B, S), generator=g), x_obs=torch.rand(B, D, generator=g), flag=STEP == 0,
                step=STEP, cond=torch.randn(B, C, 16, generator=g), dep=_dep(), mode="restrict", noisy_idx=idx,
                noisy_valid=valid, hint=torch.randn(B, S, k, generator=g))


def test_blocked_dat_is_the_dense_pass_under_the_blocked_mask(monkeypatch):
    x = _inputs()
    with torch.no_grad():
        blocked = _imputer(BLOCK).dat(**x)
    idx, valid = x["noisy_idx"], x["noisy_valid"]
    pairs = (torch.arange(D) // BLOCK)[:, None] == (torch.arange(D) // BLOCK)[None, :]

    def dense_context_mask(self, st):
        m = step_attention(st, C, None, "off")[:, :, : C + D, : C + D].clone()
        m[:, :, C:, C:] &= pairs
        return additive(m)

    def dense_noisy_mask(self, st, dep, mode, ni, nv):
        return additive(noisy_attention(st, C, dep, mode, ni, nv) & (_same_block_noisy(ni, nv) | ~nv[:, :, None])[:, None])

    def full_context(self, xx, allow):
        q, kk, v = self._qkv(xx)
        return self._finish(xx, self._attend(q, kk, v, allow)), kk, v

    monkeypatch.setattr(dat_mod.Block, "context", full_context)
    monkeypatch.setattr(dat_mod.DAT, "context_mask", dense_context_mask)
    monkeypatch.setattr(dat_mod.DAT, "noisy_mask", dense_noisy_mask)
    with torch.no_grad():
        dense = _imputer(BLOCK).dat(**x)
    live = valid & (torch.gather(STEP, 1, idx) > 0)
    assert torch.allclose(blocked[live], dense[live], atol=1e-5)
    assert torch.isfinite(blocked).all()


def test_blocked_noisy_pass_reads_sampling_buffers_like_the_plain_cache():
    x = _inputs()
    imp = _imputer(BLOCK)
    dat = imp.dat
    with torch.no_grad():
        val, cache = dat.encode_context(x["z_clean"], x["x_obs"], x["flag"], x["cond"], dat.context_mask(STEP))
        allow = dat.noisy_mask(STEP, x["dep"], "restrict", x["noisy_idx"], x["noisy_valid"])
        args = (x["z_noisy"], x["t"], x["noisy_idx"], allow, x["hint"])
        plain = dat.denoise(val, cache, *args)
        buffered = dat.denoise(val, sampling_cache(cache, x["noisy_idx"].shape[1]), *args)
    assert torch.equal(plain, buffered)
