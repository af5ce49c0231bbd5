"""Rows per forward pass under a memory cap (`ModelConfig.max_memory`, `depmicro train --max-memory`).

Why: on a wide table (1,700 taxa) a training batch of 64 rows holds activations for about 110,000
tokens per layer, and a user's first run should not swap the machine. The trainer splits each
optimizer batch into micro-batches of `train_rows` rows and accumulates gradients (the optimizer
still sees `batch_size` rows per step); imputation and validation stream over `infer_rows` rows at a
time. Without a cap training keeps one micro-batch per batch, and imputation batches are sized to
UNCAPPED_INFER_BYTES (the default batch on narrow tables). The size parser ("4GB") is
model/memory_size.py, which the config uses without torch.

The per-row figures are estimates from the shapes a pass allocates (tokens x width x the tensors
autograd keeps per layer, attention masks and scores over the clean-token and noisy-token blocks),
with a safety factor; tests/bench/scale.py measures peak memory against the cap.
"""
from __future__ import annotations

import math
import os
import resource
import sys

import numpy as np

from depmicro.core.errors import DepmicroError
from depmicro.core.model.ar import block_size
from depmicro.core.model.memory_size import parse_memory

SAFETY = 1.5  # the estimate misses allocator slack and temporaries; measured peaks stay below it (bench)
# Without a cap, imputation/validation batches are still sized to this estimate: narrow tables keep the
# default batch (106 taxa: 256 rows fit), a 1,700-taxon table takes about 20 rows instead of 256 (whose
# batch pushed a whole uncapped fit to 4.9 GB resident, bench --fit).
UNCAPPED_INFER_BYTES = 2**30


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; elsewhere its peak so far, an upper bound)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def row_bytes(cfg, n_taxa: int, n_noisy: int, train: bool) -> int:
    """Estimated bytes one row adds to a forward pass (and, for training, the backward pass)."""
    D, S, H, layers = n_taxa, max(1, n_noisy), cfg.hidden_dim, cfg.n_layers
    b = block_size(D, cfg.attn_block)
    n_blocks = -(-D // b)
    ctx_tokens = 2 + n_blocks * b
    # per token and layer: ln1, q/k/v, blocked copies of q/k/v, attention output, proj, ln2, the MLP's
    # hidden (pre and post activation) and output: about 14 widths plus 2 x mlp_ratio
    widths = 14 + 2 * cfg.mlp_ratio
    act = (ctx_tokens + S) * H * widths * layers
    # attention: the shared additive masks, and per head the scores and their softmax (kept for backward)
    if n_blocks == 1:  # noisy rows of Algorithm 2 over the whole context
        noisy = S * (ctx_tokens + S)
    else:  # per block, s_max noisy slots over [condition][b clean][the block's slots] (ar.noisy_blocks); s_max is
        # the fullest block's count: taken as twice the even share (targets spread over a row's microbes)
        s_blk = min(S, b, 2 * -(-S // n_blocks))
        noisy = n_blocks * s_blk * (2 + b + s_blk)
    masks = n_blocks * b * (b + 2) + noisy
    scores = cfg.n_heads * masks * (2 * layers if train else 2)
    # VAE encodings (frozen, no grad), latents, noise, per-token inputs; the factor layer's (D, r) products
    side = D * (32 * 3 + 8 * cfg.latent_dim) + D * H * 2 + 2 * D * cfg.vae_factor_rank
    floats = (act if train else act / layers) + masks + scores + side
    return int(SAFETY * 4 * floats)


def rows_within(budget: int, per_row: int, most: int) -> int:
    """Rows per pass: as many as the budget holds, at least 1, at most `most`."""
    return int(max(1, min(most, budget // max(per_row, 1))))


def plan_rows(cfg, Y: np.ndarray, observed: np.ndarray, default_infer: int) -> tuple[int, int]:
    """(training rows per micro-batch, inference rows per batch) for this table under cfg.max_memory.

    The budget is the cap minus what the process already holds (model, data, libraries); S, the
    noisy tokens of a row, is bounded from the table: training targets are at most 1.5 x
    train_mask_ratio of a row's observed nonzero entries, inference targets its missing entries.
    """
    cap = parse_memory(cfg.max_memory)
    D = Y.shape[1]
    nz = (observed & (np.nan_to_num(Y) > 0)).sum(1)
    s_train = int(math.ceil(min(0.95, 1.5 * cfg.train_mask_ratio) * (nz.max(initial=0)))) + 1
    s_infer = int((~observed).sum(1).max(initial=0)) + 1
    if cap == 0:  # no cap: training as configured; imputation batches still sized to UNCAPPED_INFER_BYTES
        return cfg.batch_size, rows_within(UNCAPPED_INFER_BYTES, row_bytes(cfg, D, s_infer, False), default_infer)
    budget = cap - resident_bytes()
    if budget <= 0:
        raise DepmicroError(f"max_memory {cfg.max_memory} is below what the process already holds "
                            f"({resident_bytes() / 2**20:.0f} MB for the model, data and libraries)")
    return (rows_within(budget, row_bytes(cfg, D, s_train, True), cfg.batch_size),
            rows_within(budget, row_bytes(cfg, D, s_infer, False), max(default_infer, cfg.batch_size)))


__all__ = ["SAFETY", "parse_memory", "plan_rows", "resident_bytes", "row_bytes", "rows_within"]
