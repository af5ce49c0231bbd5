"""`attn_layout: correlation`: which microbes share a DAT attention block. The layout must bring planted
pairs into one block, change nothing but the blocks (the DAT with a layout is the plain DAT on permuted
microbes), and travel with a bundle."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from depmicro.core.data.evaluation import make_split, training_view
from depmicro.core.data.synthetic import make_synthetic
from depmicro.core.model.bundle import load_model, save_model
from depmicro.core.model.config import config_from_dict
from depmicro.core.model.imputer import DepMicroDiffImputer
from depmicro.core.model.layout import correlation_layout

from tests.core.model.test_blocks import BLOCK, D, _inputs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correlation_layout_puts_planted_pairs_in_one_block(seed):
    ds, truth = make_synthetic(n_samples=300, n_taxa=96, seed=seed, n_directed=4, n_symmetric=12, metadata=False, n_modules=3)
    Y = ds.normalized
    split = make_split(Y, seed=0)
    perm = correlation_layout(training_view(Y, split), split.observed, 16)
    assert sorted(perm) == list(range(96))
    block_of = np.argsort(perm) // 16

    def together(blk):
        return np.mean([blk[a] == blk[b] for a, b in truth.symmetric])

    # index order: 0.17 / 0.33 / 0.08 of the 12 pairs share a block; the layout: 0.92 / 0.83 / 0.92
    assert together(block_of) >= 0.75 > together(np.arange(96) // 16) + 0.3
    assert np.array_equal(correlation_layout(Y, split.observed, 96), np.arange(96))  # one block: nothing to lay out


def _dat(block: int, layout: bool):
    cfg = config_from_dict(dict(latent_dim=2, vae_hidden=16, hidden_dim=16, n_layers=2, n_heads=2, timesteps=100,
                                use_metadata=False, attn_block=block, attn_layout="correlation" if layout else "index"))
    torch.manual_seed(0)
    dat = DepMicroDiffImputer(cfg, D).dat
    torch.nn.init.normal_(dat.out.weight)
    return dat


PERM = torch.tensor([7, 2, 10, 0, 5, 9, 1, 4, 8, 3, 6])


@pytest.mark.parametrize("block", [BLOCK, 0])
def test_a_layout_is_the_plain_dat_on_permuted_microbes(block):
    x = _inputs()
    laid, plain = _dat(block, True), _dat(block, False)
    state = {k: v for k, v in plain.state_dict().items()}
    laid.load_state_dict({**state, "layout": PERM})
    inv = torch.argsort(PERM)
    # the plain DAT, fed the microbes in layout order: token i is microbe PERM[i]
    state["pos"] = state["pos"][PERM]
    plain.load_state_dict(state)
    moved = dict(x, z_clean=x["z_clean"][:, PERM], x_obs=x["x_obs"][:, PERM], flag=x["flag"][:, PERM],
                 step=x["step"][:, PERM], dep=x["dep"][PERM][:, PERM], noisy_idx=inv[x["noisy_idx"]])
    with torch.no_grad():
        a, b = laid(**x), plain(**moved)
    live = x["noisy_valid"] & (torch.gather(x["step"], 1, x["noisy_idx"]) > 0)
    assert torch.allclose(a[live], b[live], atol=1e-5)
    with torch.no_grad():
        c = _dat(block, False)(**x)
    if block:  # the layout changed which microbes share a block, so the output too
        assert not torch.allclose(a[live], c[live], atol=1e-3)
    else:  # one block: attention is order-free, the layout changes nothing
        assert torch.allclose(a[live], c[live], atol=1e-5)


def test_a_layout_is_a_permutation_and_travels_with_the_bundle(tmp_path):
    with pytest.raises(ValueError, match="permutation"):
        _dat(BLOCK, True).set_layout([0] * D)
    ds, _ = make_synthetic(n_samples=120, n_taxa=24, seed=0, n_directed=2, n_symmetric=6, metadata=False)
    Y = ds.normalized
    obs = make_split(Y, seed=0).observed
    cfg = config_from_dict(dict(latent_dim=2, vae_hidden=16, hidden_dim=16, n_layers=1, n_heads=2, vae_epochs=2, epochs=1,
                                batch_size=32, timesteps=100, use_metadata=False, attn_block=8, attn_layout="correlation"))
    imp = DepMicroDiffImputer(cfg, 24, ds.var_names).fit(Y, obs)
    layout = imp.dat.layout.clone()
    assert not torch.equal(layout, torch.arange(24))
    assert torch.equal(layout, torch.as_tensor(correlation_layout(np.where(obs, Y, np.nan), obs, 8)))
    save_model(imp, tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert torch.equal(back.dat.layout, layout)
    np.testing.assert_array_equal(back.impute(Y, obs), imp.impute(Y, obs))
