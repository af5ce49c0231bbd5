"""A memory cap picks training micro-batches and imputation batches (issue 13)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from depmicro.core.data.evaluation import make_split, training_view
from depmicro.core.data.synthetic import kraken_like
from depmicro.core.errors import DepmicroError
from depmicro.core.model.config import config_from_dict
from depmicro.core.model.memory import UNCAPPED_INFER_BYTES, parse_memory, plan_rows, resident_bytes, row_bytes, rows_within

SMALL = dict(latent_dim=2, vae_hidden=16, hidden_dim=16, n_layers=1, n_heads=2, vae_epochs=1, epochs=1, batch_size=32,
             timesteps=100, sampling_fraction=50, dep_mask_mode="off", use_metadata=False, attn_block=128)


def test_parse_memory():
    assert parse_memory("4GB") == 4 * 2**30 and parse_memory("512 MB") == 512 * 2**20 and parse_memory("1.5g") == 3 * 2**29
    assert parse_memory("") == 0 and parse_memory(1000) == 1000
    for bad in ("4 parsecs", "-1GB", "GB", "1e9"):
        with pytest.raises(DepmicroError, match="max_memory"):
            parse_memory(bad)
    with pytest.raises(DepmicroError, match="max_memory"):
        config_from_dict({"max_memory": "lots"})


def test_row_estimate_grows_linearly_in_taxa_with_blocks():
    cfg = config_from_dict({"attn_block": 256})
    per = [row_bytes(cfg, D, D // 10, True) / D for D in (512, 1024, 2048)]
    # blocked clean tokens: bytes per taxon grow only through the noisy rows (S = D / 10 here)
    assert per[2] < 1.5 * per[0]
    full = config_from_dict({"attn_block": 0})
    assert row_bytes(full, 2048, 204, True) > 3 * row_bytes(cfg, 2048, 204, True)


@pytest.fixture
def one_thread():
    """Two torch threads on the shared 2-core CI machine ran this test 10x slower than one (measured)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_a_wide_table_trains_and_imputes_under_a_small_cap(one_thread):
    """300 x 1,000 (kraken-like): one short epoch in micro-batches, then imputation in capped batches."""
    from depmicro.core.model.imputer import INFER_BATCH
    from depmicro.core.train.fitting import build_imputer
    from depmicro.core.train.trainer import Trainer
    from depmicro.core.train.vae_phase import pretrain_vae

    ds, _ = kraken_like(n_samples=300, n_taxa=1000, seed=0, metadata=False)
    Y = ds.normalized
    s = make_split(Y, seed=0)
    view = training_view(Y, s)
    torch.manual_seed(0)
    imp = build_imputer(config_from_dict(SMALL), view, s.observed, ds.var_names, None)
    pretrain_vae(imp, view, s.observed, [])
    # no cap: training as configured, imputation batches sized to UNCAPPED_INFER_BYTES by the same estimate
    uncapped = rows_within(UNCAPPED_INFER_BYTES, row_bytes(imp.cfg, 1000, int((~s.observed).sum(1).max()) + 1, False), INFER_BATCH)
    assert plan_rows(imp.cfg, view, s.observed, INFER_BATCH) == (imp.cfg.batch_size, uncapped)
    narrow = config_from_dict({**SMALL, "hidden_dim": 64, "attn_block": 256})  # a TCMA-width table keeps the default batch
    assert plan_rows(narrow, view[:, :106], s.observed[:, :106], INFER_BATCH) == (narrow.batch_size, INFER_BATCH)
    imp.cfg = config_from_dict({**SMALL, "max_memory": str(resident_bytes() + 48 * 2**20)})  # 48 MB of room
    trainer = Trainer(imp, view, s.observed, None)
    assert 1 <= trainer.micro < imp.cfg.batch_size and 1 <= imp.infer_rows < INFER_BATCH
    before = [p.detach().clone() for p in imp.dat.parameters()]
    loss = trainer.epoch()
    assert np.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, imp.dat.parameters()))
    filled = imp.impute(view, s.observed)
    assert filled.shape == Y.shape and np.isfinite(filled).all()
    assert np.array_equal(filled[s.observed], Y[s.observed])

    with pytest.raises(DepmicroError, match="below what the process already holds"):
        plan_rows(config_from_dict({**SMALL, "max_memory": "1MB"}), view, s.observed, INFER_BATCH)
