"""The training loss attends through the DAT's own masks (blocked context, noisy rows only), so what
the blocks save at inference they save in training too, and one block is Algorithm 2 exactly."""
from __future__ import annotations

import numpy as np
import torch

from depmicro.core.data import Dataset
from depmicro.core.data.evaluation import make_split
from depmicro.core.diffusion.loss import epsilon_loss
from depmicro.core.model import ar
from depmicro.core.model.config import config_from_dict
from depmicro.core.model.imputer import DepMicroDiffImputer

D = 12


def _loss(attn_block: int, x0_loss: float) -> float:
    g = np.random.default_rng(0)
    counts = np.round(np.exp(2 + g.normal(size=(40, D)))) * (g.random((40, D)) < 0.6)
    counts[:, 0] += 1
    Y = Dataset(counts=counts, obs_names=[], var_names=[]).normalized
    split = make_split(Y, seed=0)
    cfg = config_from_dict(dict(latent_dim=2, vae_hidden=16, hidden_dim=16, n_layers=2, n_heads=2, timesteps=100,
                                dep_mask_mode="restrict", use_metadata=False, attn_block=attn_block, x0_loss=x0_loss,
                                train_mask_ratio=0.5))
    torch.manual_seed(0)
    imp = DepMicroDiffImputer(cfg, D)
    with torch.no_grad():
        torch.nn.init.normal_(imp.dat.out.weight)
    y = torch.as_tensor(np.where(split.observed, Y, 0.0), dtype=torch.float32)
    m = torch.as_tensor(split.observed)
    torch.manual_seed(1)
    return float(epsilon_loss(imp, y, m, None, torch.zeros(len(Y), dtype=torch.bool), np.random.default_rng(2)).detach())


def test_training_loss_uses_the_blocked_masks(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the training loss built the (L, L) reference mask")

    monkeypatch.setattr(ar, "step_attention", refuse)
    for x0 in (0.0, 1.0):
        whole = _loss(0, x0)
        assert _loss(D, x0) == whole  # one block of every microbe: the same pass
        assert abs(_loss(4, x0) - whole) > 1e-6  # blocks close pairs, in training as at inference
