"""AR step sizes (Algorithm 1), the dependency-aware attention mask (Algorithm 2) and AR orders.

`attention_mask` is Algorithm 2 as printed (1 = blocked), for sequences already laid out in AR order.
The model itself works on a fixed layout in microbe index order, with one AR step id per token
(`step_attention`), which is Algorithm 2 up to a permutation of tokens; tests check the two agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from depmicro.core.errors import DepmicroError

DEP_MODES = ("paper", "restrict", "off")


def ar_step_probs(S: int, alpha: float) -> np.ndarray:
    """P(N = n) for n = 1..S: b * alpha^(n-1), with b normalizing (uniform when alpha = 1)."""
    if alpha == 1.0:
        return np.full(S, 1.0 / S)
    b = (1 - alpha) / (1 - alpha**S)
    return b * alpha ** np.arange(S)


def ar_steps(S: int, alpha: float, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Algorithm 1: draw the number of AR steps N, then N-1 distinct boundaries.

    The paper's line 9 samples boundaries "from [1, S]"; drawing S itself would give an empty last
    step, so boundaries come from 1..S-1 (as in CausalFusion's code) and every step is nonempty.
    """
    if S < 1:
        raise DepmicroError(f"AR split needs at least one token, not {S}")
    if not 0 < alpha <= 1:
        raise DepmicroError(f"AR decay must be in (0, 1], not {alpha}")
    if alpha == 1.0:
        n = int(rng.integers(1, S + 1))
    else:
        n = int(rng.choice(np.arange(1, S + 1), p=ar_step_probs(S, alpha)))
    inner = sorted(int(x) for x in rng.choice(np.arange(1, S), size=n - 1, replace=False)) if n > 1 else []
    cs = [0] + inner + [S]
    sz = [cs[i + 1] - cs[i] for i in range(n)]
    return sz, cs


def attention_mask(s: int, c: int, sz: list[int], cs: list[int], dep: np.ndarray | None = None, mode: str = "restrict") -> np.ndarray:
    """Algorithm 2 (1 = blocked, 0 = may attend) for [c condition][v visible][s noisy] tokens.

    `mode` decides how `dep` (bool (s, s), True = row token may attend column token, in AR order)
    enters the sample-to-sample block: `paper` is line 18 literally (sTs OR Dep, which blocks
    dependent pairs), `restrict` lets a token attend only itself and its dependents inside its step,
    `off` ignores Dep.
    """
    if mode not in DEP_MODES:
        raise DepmicroError(f"dep_mask_mode must be one of {', '.join(DEP_MODES)}, not {mode!r}")
    if sum(sz) != s or len(cs) != len(sz) + 1 or cs[0] != 0 or cs[-1] != s:
        raise DepmicroError(f"split sizes {sz} / cumulative sums {cs} do not cover {s} tokens")
    v = s - sz[-1]
    ctx = c + v
    seq = ctx + s
    M = np.ones((seq, seq), dtype=np.int8)
    M[:, :c] = 0
    vTv = np.ones((v, v), dtype=np.int8)
    sTv = np.ones((s, v), dtype=np.int8)
    sTs = np.ones((s, s), dtype=np.int8)
    for i in range(len(sz) - 1):
        vTv[cs[i] : cs[i + 1], 0 : cs[i + 1]] = 0
        sTv[cs[i + 1] : cs[i + 2], 0 : cs[i + 1]] = 0
    for i in range(len(sz)):
        sTs[cs[i] : cs[i + 1], cs[i] : cs[i + 1]] = 0
    if dep is not None and mode != "off":
        dep = np.asarray(dep, dtype=bool)
        if dep.shape != (s, s):
            raise DepmicroError(f"dependency mask shape {dep.shape} does not match {s} tokens")
        if mode == "paper":
            sTs = sTs | dep.astype(np.int8)
        else:  # restrict: inside a step, only self and dependent tokens
            sTs = np.where(dep | np.eye(s, dtype=bool), sTs, 1).astype(np.int8)
    M[c:ctx, c:ctx] = vTv
    M[ctx:seq, c:ctx] = sTv
    M[ctx:seq, ctx:seq] = sTs
    return M


def step_attention(step: torch.Tensor, c: int, dep: torch.Tensor | None, mode: str,
                   noisy_idx: torch.Tensor | None = None, noisy_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean "may attend" mask (B, 1, L, L) for the model's layout [c cond][D clean][S noisy].

    `step` (B, D) long: 0 = observed (clean from the start, never noisy), k >= 1 = the AR step that
    generates the token. `noisy_idx` (B, S) names the microbe of each noisy token (default: all D,
    in index order) and `noisy_valid` marks padding. Clean copy of token i sees clean tokens of
    steps <= step i (vTv); a noisy token of step k sees clean tokens of steps < k (sTv) and noisy
    tokens of step k (sTs, shaped by Dep and `mode`). Padding and noisy copies of observed tokens
    see only the condition tokens. Everybody sees the condition tokens; condition tokens see only
    each other. This is Algorithm 2 with tokens kept in index order instead of AR order.

    The model never builds this (L, L) matrix: it attends with `context_attention` (the clean rows,
    in blocks; the condition rows, which see only each other, apart) and `noisy_attention` (the last
    S rows); this is their reference.
    """
    B, D = step.shape
    if noisy_idx is None:
        noisy_idx = torch.arange(D, device=step.device).expand(B, D)
    noisy = noisy_attention(step, c, dep, mode, noisy_idx, noisy_valid)[:, 0]
    S = noisy_idx.shape[1]
    L = c + D + S
    allow = torch.zeros(B, L, L, dtype=torch.bool, device=step.device)
    allow[:, : c + D, :c] = True
    allow[:, c : c + D, c : c + D] = step[:, None, :] <= step[:, :, None]
    allow[:, c + D :] = noisy
    return allow[:, None]


def noisy_attention(step: torch.Tensor, c: int, dep: torch.Tensor | None, mode: str, noisy_idx: torch.Tensor,
                    noisy_valid: torch.Tensor | None = None) -> torch.Tensor:
    """The noisy tokens' rows of `step_attention`, (B, 1, S, c + D + S), without the other L x L entries."""
    B, D = step.shape
    dev = step.device
    if noisy_valid is None:
        noisy_valid = torch.ones_like(noisy_idx, dtype=torch.bool)
    S = noisy_idx.shape[1]
    allow = torch.zeros(B, S, c + D + S, dtype=torch.bool, device=dev)
    allow[:, :, :c] = True
    ns = torch.gather(step, 1, noisy_idx)  # (B, S) step of each noisy token
    live = noisy_valid & (ns > 0)
    allow[:, :, c : c + D] = (step[:, None, :] < ns[:, :, None]) & live[:, :, None]
    allow[:, :, c + D :] = same_step_pairs(ns, live, noisy_idx, dep, mode)
    return allow[:, None]


def same_step_pairs(ns: torch.Tensor, live: torch.Tensor, idx: torch.Tensor, dep: torch.Tensor | None, mode: str) -> torch.Tensor:
    """Algorithm 2's sample-to-sample block (sTs) for noisy tokens with steps `ns`, liveness `live` and
    microbes `idx`, all (N, S): which of them (N, S, S) may attend each other, shaped by Dep and `mode`."""
    same = (ns[:, None, :] == ns[:, :, None]) & live[:, :, None] & live[:, None, :]
    if dep is None or mode == "off":
        return same
    d = dep.to(ns.device, torch.bool)[idx[:, :, None], idx[:, None, :]]
    if mode == "paper":
        return same & ~d
    if mode == "restrict":
        return same & (d | (idx[:, :, None] == idx[:, None, :]))
    raise DepmicroError(f"dep_mask_mode must be one of {', '.join(DEP_MODES)}, not {mode!r}")


def block_size(D: int, block: int) -> int:
    """The clean-token block actually used: `block`, or D when one block holds them all (0 = always)."""
    return D if block <= 0 or block >= D else block


def context_attention(step: torch.Tensor, c: int, block: int) -> torch.Tensor:
    """The clean tokens' rows of `step_attention` restricted to blocks of `block` consecutive
    microbes: (B * n_blocks, 1, b, c + b) over [the c condition tokens][the block's b tokens].

    Why: the full clean-clean block costs D^2 per sample and layer; in blocks it costs D * b, so a
    step grows linearly with D. Every pair opened here is open in Algorithm 2 (blocks only close
    pairs), so causality and no-leakage hold as before; with block >= D it is exactly those rows.
    The last block is padded: padding keys are closed to everybody, padding queries see the condition
    tokens only.
    """
    B, D = step.shape
    b = block_size(D, block)
    nb = -(-D // b)
    pad = nb * b - D
    st = torch.nn.functional.pad(step, (0, pad), value=-1).view(B * nb, b)  # -1: padding
    real = st >= 0
    inner = (st[:, None, :] <= st[:, :, None]) & real[:, None, :]
    cond = torch.ones(B * nb, b, c, dtype=torch.bool, device=step.device)
    return torch.cat([cond, inner], dim=2)[:, None]


@dataclass(frozen=True)
class NoisyBlocks:
    """The noisy tokens' attention in blocks of `b` microbes: each (row, block) holds up to `s_max`
    noisy-token slots that attend [the c condition tokens][the block's b clean tokens][the block's slots].

    `slot` (n,) is the flat slot (row * n_blocks + block) * s_max + position of each valid noisy token,
    in the row-major order of `noisy_valid`; `mask` (B * n_blocks, 1, s_max, c + b + s_max) is boolean
    (True = may attend). Invalid (padding) tokens get no slot: they attend the condition tokens only.
    """

    mask: torch.Tensor
    slot: torch.Tensor
    valid: torch.Tensor
    b: int
    n_blocks: int
    s_max: int
    n_taxa: int


def noisy_blocks(step: torch.Tensor, c: int, dep: torch.Tensor | None, mode: str, noisy_idx: torch.Tensor,
                 noisy_valid: torch.Tensor | None, block: int) -> NoisyBlocks:
    """`noisy_attention` restricted to pairs inside one block of `block` microbes, laid out per block.

    Why: a noisy token otherwise attends all D clean tokens, and a training row holds noisy tokens
    for a fixed share of its microbes, so that pass grows as D^2; per block it grows as D * b, like the
    clean tokens' (`context_attention`). Blocks only close pairs of Algorithm 2, so causality and
    no-leakage hold; with one block the model uses `noisy_attention` itself.
    """
    B, D = step.shape
    dev = step.device
    if noisy_valid is None:
        noisy_valid = torch.ones_like(noisy_idx, dtype=torch.bool)
    b = block_size(D, block)
    nb = -(-D // b)
    bid = torch.where(noisy_valid, noisy_idx // b, 0)
    onehot = torch.nn.functional.one_hot(bid, nb) * noisy_valid[..., None]  # (B, S, nb)
    pos = (onehot.cumsum(1) * onehot).sum(-1) - 1  # position of each valid token inside its (row, block)
    s_max = max(1, int(onehot.sum(1).max()))
    rows = torch.arange(B, device=dev)[:, None].expand_as(bid)
    slot = ((rows * nb + bid) * s_max + pos)[noisy_valid]
    ns = torch.gather(step, 1, noisy_idx)
    slot_step = torch.full((B * nb * s_max,), -1, dtype=step.dtype, device=dev)
    slot_step[slot] = ns[noisy_valid]
    slot_idx = torch.zeros(B * nb * s_max, dtype=noisy_idx.dtype, device=dev)
    slot_idx[slot] = noisy_idx[noisy_valid]
    slot_step, slot_idx = slot_step.view(B * nb, s_max), slot_idx.view(B * nb, s_max)
    live = slot_step > 0
    st = torch.nn.functional.pad(step, (0, nb * b - D), value=-1).view(B * nb, b)  # -1: padding, closed below
    clean = (st[:, None, :] < slot_step[:, :, None]) & (st >= 0)[:, None, :] & live[:, :, None]
    same = same_step_pairs(slot_step, live, slot_idx, dep, mode)
    cond = torch.ones(B * nb, s_max, c, dtype=torch.bool, device=dev)
    mask = torch.cat([cond, clean, same], dim=2)[:, None]
    return NoisyBlocks(mask=mask, slot=slot, valid=noisy_valid, b=b, n_blocks=nb, s_max=s_max, n_taxa=D)


def gather_index(select: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the column indices where `select` is True, left-aligned and padded: (idx, valid), (B, S)."""
    select = np.asarray(select, dtype=bool)
    B, D = select.shape
    counts = select.sum(1)
    S = max(1, int(counts.max(initial=0)))
    order = np.argsort(~select, axis=1, kind="stable")[:, :S]  # selected columns first, in index order
    valid = np.arange(S)[None, :] < counts[:, None]
    return np.where(valid, order, 0).astype(np.int64), valid


def token_rank(order: str, Y: np.ndarray, observed: np.ndarray, dep_f: np.ndarray | None = None, f_threshold: float = 0.0) -> np.ndarray:
    """Position of each microbe in the AR order (0 = generated first).

    index: file order. variance: most variable observed microbe first (it carries the most signal
    for the rest). dependency: causes before effects, by C_dir out-degree minus in-degree
    (C_dir[i, j] = F of j -> i above the threshold), ties by index.
    """
    D = Y.shape[1]
    if order == "index":
        key = np.arange(D, dtype=float)
    elif order == "variance":
        Yo = np.where(observed, np.nan_to_num(Y), np.nan)
        with np.errstate(all="ignore"):
            var = np.nan_to_num(np.nanvar(Yo, axis=0), nan=0.0)
        key = -var + np.arange(D) * 1e-12
    elif order == "dependency":
        if dep_f is None:
            raise DepmicroError("ar_order 'dependency' needs dependency statistics")
        cdir = np.asarray(dep_f) > f_threshold
        np.fill_diagonal(cdir, False)
        score = cdir.sum(axis=0) - cdir.sum(axis=1)  # out-degree (column j drives rows) minus in-degree
        key = -score.astype(float) + np.arange(D) * 1e-6
    else:
        raise DepmicroError(f"ar_order must be index, variance or dependency, not {order!r}")
    rank = np.empty(D, dtype=np.int64)
    rank[np.argsort(key, kind="stable")] = np.arange(D)
    return rank


def _targets_in_order(target: np.ndarray, rank: np.ndarray):
    """(row, target token ids sorted by AR rank) for every row with at least one target."""
    for b in range(target.shape[0]):
        idx = np.flatnonzero(target[b])
        if idx.size:
            yield b, idx[np.argsort(rank[idx], kind="stable")]


def train_steps(target: np.ndarray, rank: np.ndarray, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Step ids (B, D) for training: per sample, Algorithm 1 over its target tokens in AR order.

    Vectorized over the batch (this runs every optimizer step): per row, N ~ P(N = n) by inverse CDF,
    then N - 1 distinct boundaries uniformly from 1..S-1 (the N - 1 smallest of S - 1 random keys),
    and a target's step is 1 + the number of boundaries at or before its position in AR order.
    """
    target = np.asarray(target, dtype=bool)
    B, D = target.shape
    if not 0 < alpha <= 1:
        raise DepmicroError(f"AR decay must be in (0, 1], not {alpha}")
    S = target.sum(1)
    step = np.zeros((B, D), dtype=np.int64)
    if not S.any():
        return step
    # position of each target in its row's AR order
    key = np.where(target, rank[None, :].astype(np.float64), np.inf)
    order = np.argsort(key, axis=1, kind="stable")  # targets first, by AR rank
    n = np.ones(B, dtype=np.int64)
    u = rng.random(B)
    for s_val in np.unique(S[S > 1]):  # one CDF per distinct target count
        rows = np.flatnonzero(S == s_val)
        cdf = np.cumsum(ar_step_probs(int(s_val), alpha))
        n[rows] = np.minimum(np.searchsorted(cdf, u[rows] * cdf[-1], side="right") + 1, s_val)
    pos = np.arange(D)[None, :]
    keys = np.where((pos >= 1) & (pos < S[:, None]), rng.random((B, D)), np.inf)  # boundary candidates 1..S-1
    krank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
    boundary = (krank < (n - 1)[:, None]) & np.isfinite(keys)
    step_sorted = 1 + np.cumsum(boundary, axis=1)  # step of the target at AR position p
    live = pos < S[:, None]
    rows = np.repeat(np.arange(B), D).reshape(B, D)
    step[rows[live], order[live]] = step_sorted[live]
    return step


def infer_steps(target: np.ndarray, rank: np.ndarray, n_steps: int) -> np.ndarray:
    """Step ids (B, D) for inference: each sample's targets in AR order, cut into n_steps even chunks
    (a fixed count so a batch moves through its AR steps together; short rows leave steps empty)."""
    step = np.zeros(target.shape, dtype=np.int64)
    for b, idx in _targets_in_order(target, rank):
        for k, chunk in enumerate(np.array_split(idx, n_steps)):
            step[b, chunk] = k + 1
    return step
