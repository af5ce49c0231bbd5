"""The point estimate, the step-budgeted trainer with EMA, and whether the DAT adds anything to its
encoder on data with planted dependencies. Small synthetic sets; seconds each."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from depmicro.core.model.bundle import load_model, save_model
from depmicro.core.model.imputer import DepMicroDiffImputer
from depmicro.core.data.evaluation import evaluate, make_split, training_view
from depmicro.core.model.module import DepMicroDiff
from depmicro.core.train import fit
from depmicro.core.train.trainer import epoch_batches, lr_factor, planned_epochs
from tests.core.model.test_model import cfg_of, small_counts, small_dataset
from depmicro.core.data import Dataset


def _nontrivial(imp: DepMicroDiffImputer) -> DepMicroDiffImputer:
    """Random DAT weights with a nonzero x0 head, so the estimate is not the encoder's."""
    torch.manual_seed(5)
    with torch.no_grad():
        for p in imp.dat.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return imp


def test_mean_estimate_is_deterministic_and_ignores_sampler_settings():
    Y = Dataset(counts=small_counts(), obs_names=[], var_names=[]).normalized
    obs = make_split(Y, seed=1).observed
    imp = _nontrivial(DepMicroDiffImputer(cfg_of(estimate="mean", infer_ar_steps=2), Y.shape[1]))
    a = imp.impute(Y, obs)
    base = imp.cfg
    for kw in (dict(sampling="full"), dict(sampling="adaptive", sampling_fraction=2), dict(sampler_eta=1.0, n_impute_samples=5),
               dict(seed=99)):
        imp.cfg = dataclasses.replace(base, **kw)
        np.testing.assert_array_equal(imp.impute(Y, obs, seed=7), a)
    imp.cfg = base
    np.testing.assert_array_equal(a[obs], Y[obs])
    assert np.abs(a[~obs] - imp.encoder_impute(Y, obs)[~obs]).max() > 1e-3  # the DAT's x0, not the encoder's
    # a draw is something else, and the AR steps matter: step 2 conditions on step 1's estimate
    imp.cfg = dataclasses.replace(base, estimate="sample", sampler_eta=1.0)
    assert not np.allclose(imp.impute(Y, obs), a)
    imp.cfg = dataclasses.replace(base, infer_ar_steps=1)
    assert np.abs(imp.impute(Y, obs) - a).max() > 1e-4


def test_uncertainty_has_the_data_shape_and_is_zero_where_observed():
    Y = Dataset(counts=small_counts(), obs_names=[], var_names=[]).normalized
    obs = make_split(Y, seed=1).observed
    imp = _nontrivial(DepMicroDiffImputer(cfg_of(sampler_eta=1.0), Y.shape[1]))
    s = imp.uncertainty(Y, obs, n=4)
    assert s.shape == Y.shape and (s >= 0).all() and (s[obs] == 0).all() and (s[~obs] > 0).mean() > 0.5
    # folded in one draw at a time, it is the std of the very draws `sample` stacks
    np.testing.assert_allclose(s, imp.sample(Y, obs, 4).std(axis=0), rtol=1e-9, atol=1e-12)


def test_lr_schedule_and_step_budget():
    assert [round(lr_factor(s, 10, 4, "cosine"), 3) for s in (0, 3, 4, 7, 9)] == [0.25, 1.0, 1.0, 0.5, 0.067]
    assert lr_factor(50, 10, 0, "constant") == 1.0
    assert epoch_batches(60, 32) == 2 and epoch_batches(66, 32) == 2 and epoch_batches(72, 32) == 3
    cfg = cfg_of(batch_size=16, train_steps=7, epochs=99)
    assert planned_epochs(cfg, 40) == 3  # 40 rows at 16: batches of 16, 16, 8 (8 >= 16 // 4 stays its own), 7 steps = 3 epochs
    ds = small_dataset()
    res = fit(cfg, ds, make_split(ds.normalized, seed=0))
    assert res.history[-1]["step"] == 7 and res.epochs == planned_epochs(cfg, 60)


def test_ema_weights_are_validated_saved_exported_and_loaded(tmp_path):
    ds = small_dataset()
    split = make_split(ds.normalized, seed=0)
    cfg = cfg_of(epochs=3, ema_decay=0.9, lr=0.01, batch_size=16)
    seen = {}

    def hook(rep):
        raw = {k: v.clone() for k, v in rep.model.dat.state_dict().items()}
        with rep.ema_weights():
            ema = {k: v.clone() for k, v in rep.model.dat.state_dict().items()}
        assert all(torch.equal(raw[k], v) for k, v in rep.model.dat.state_dict().items())  # raw weights are back
        seen[rep.epoch] = (raw, ema, rep.val["pcc_per_microbe"])
        rep.save_checkpoint(tmp_path / f"ep{rep.epoch}")

    res = fit(cfg, ds, split, on_epoch=hook)
    raw, ema, _ = seen[2]
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    bundle = load_model(tmp_path / "ep2")
    assert all(torch.equal(bundle.dat.state_dict()[k], ema[k]) for k in ema)  # the loadable model is the EMA
    state = torch.load(tmp_path / "ep2" / "train_state.pt", weights_only=True)
    assert all(torch.equal(state["dat_raw"][k], raw[k]) for k in raw)  # raw weights only in the checkpoint
    best = max(seen, key=lambda e: seen[e][2])
    final = res.imputer.dat.state_dict()
    assert all(torch.equal(final[k], seen[best][1][k]) for k in final)  # the selected model is the best epoch's EMA
    save_model(res.imputer, tmp_path / "export")
    back = load_model(tmp_path / "export")
    assert all(torch.equal(back.dat.state_dict()[k], final[k]) for k in final)
    # resuming from epoch 2 continues the raw weights and the EMA: epoch 3 matches the uninterrupted run
    again = {}
    fit(cfg, ds, split, resume_from=tmp_path / "ep2",
        on_epoch=lambda r: again.setdefault(r.epoch, {k: v.clone() for k, v in r.model.dat.state_dict().items()}))
    assert all(torch.allclose(again[3][k], seen[3][0][k], atol=1e-6) for k in again[3])


def test_validation_imputes_only_rows_with_validation_entries_and_scores_as_the_whole_table(monkeypatch):
    ds = small_dataset()
    split = make_split(ds.normalized, seed=0)
    rows = split.val.any(axis=1)
    assert 0 < rows.sum() < len(rows)  # otherwise the test shows nothing
    Y, view, obs = ds.normalized, training_view(ds.normalized, split), split.observed
    cfg = cfg_of(epochs=2, ema_decay=0.9, lr=0.01, batch_size=16)
    seen, shapes = {}, []

    def hook(rep):
        assert shapes == [int(rows.sum())]  # this epoch's validation pass, before the hook imputes the whole table
        with rep.ema_weights():
            whole = evaluate(Y, rep.model.impute(view, obs), split.val)
        seen[rep.epoch] = (rep.val, whole)
        shapes.clear()

    real = DepMicroDiff.impute

    def spy(self, Yv, o, *a, **k):
        shapes.append(len(Yv))
        return real(self, Yv, o, *a, **k)

    monkeypatch.setattr(DepMicroDiff, "impute", spy)
    fit(cfg, ds, split, on_epoch=hook)
    assert sorted(seen) == [1, 2]
    for val, whole in seen.values():
        for k in ("pcc_per_microbe", "rmse", "mae", "pcc", "n_heldout"):
            assert val[k] == pytest.approx(whole[k], rel=1e-6, abs=1e-7), k


def test_dat_beats_its_own_encoder_on_planted_dependencies():
    """The DAT has to add something to the VAE it sits on: on data whose taxa come in strongly
    coupled pairs, its mean estimate of held-out entries beats decoding the encoder's latent."""
    from depmicro.core.model.config import config_from_dict
    from depmicro.core.data.synthetic import make_synthetic

    ds, _ = make_synthetic(n_samples=200, n_taxa=16, n_directed=2, n_symmetric=6, metadata=False)
    split = make_split(ds.normalized, seed=0, test_ratio=0.2, val_ratio=0.1)
    cfg = config_from_dict(dict(latent_dim=2, vae_hidden=16, vae_epochs=10, vae_pretrain=False, hidden_dim=32, n_layers=2, n_heads=2,
                                timesteps=100, dep_mask_mode="off", use_metadata=False, batch_size=32, train_steps=120, lr=2e-3,
                                lr_schedule="cosine", warmup_steps=10, ema_decay=0.99, x0_loss=1.0, val_every=1000))
    res = fit(cfg, ds, split)
    Y, view, obs = ds.normalized, training_view(ds.normalized, split), split.observed
    mse = lambda f: float(((f - Y)[split.test] ** 2).mean())  # noqa: E731
    enc, dat = mse(res.imputer.encoder_impute(view, obs)), mse(res.imputer.impute(view, obs))
    assert dat < 0.8 * enc, (dat, enc)


def test_value_space_regression_beats_latent_regression_on_planted_dependencies():
    """`x0_value_loss` scores the mean estimate where the metric is (the decoded value); the latent
    MSE of `x0_loss` weighs latent directions the decoder ignores like those it amplifies. Same data,
    same split, same seeds: held-out pcc_per_microbe, averaged over three synthetic tables
    (measured +0.07: 0.209 vs 0.141)."""
    from depmicro.core.model.config import config_from_dict
    from depmicro.core.data.evaluation import evaluate
    from depmicro.core.data.synthetic import make_synthetic

    score = {"latent": [], "value": []}
    for seed in (0, 1, 2):
        ds, _ = make_synthetic(n_samples=200, n_taxa=16, n_directed=2, n_symmetric=6, metadata=False, seed=seed)
        split = make_split(ds.normalized, seed=0, test_ratio=0.2, val_ratio=0.1)
        view = training_view(ds.normalized, split)
        for name, loss in (("latent", dict(x0_loss=1.0)), ("value", dict(x0_value_loss=30.0))):
            cfg = config_from_dict(dict(latent_dim=2, vae_hidden=16, vae_epochs=10, vae_pretrain=False, hidden_dim=32,
                                        n_layers=2, n_heads=2, timesteps=100, dep_mask_mode="off", use_metadata=False,
                                        batch_size=32, train_steps=120, lr=2e-3, lr_schedule="cosine", warmup_steps=10,
                                        ema_decay=0.99, val_every=1000, **loss))
            res = fit(cfg, ds, split)
            filled = res.imputer.impute(view, split.observed)
            score[name].append(evaluate(ds.normalized, filled, split.test)["pcc_per_microbe"])
    gain = sum(score["value"]) / 3 - sum(score["latent"]) / 3
    assert gain > 0.03, score
