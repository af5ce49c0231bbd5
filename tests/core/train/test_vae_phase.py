"""The VAE phase is paid once per key: a cache hit gives the same trial as a miss, the key follows
exactly the VAE's inputs, and a damaged entry is retrained rather than used (study trials: tests/studies/test_prepare.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from depmicro.core.model.config import config_from_dict
from depmicro.core.errors import DepmicroError
from depmicro.core.data.evaluation import evaluate, make_split, training_view
from depmicro.core.data.synthetic import make_synthetic
from depmicro.core.train import cached_vae_entry, fit
from depmicro.core.train.vae_phase import entry_path, load_vae_entry, vae_cache_key, vae_settings

TINY = dict(latent_dim=2, vae_hidden=16, hidden_dim=16, n_layers=1, n_heads=2, vae_epochs=3, epochs=2, batch_size=32,
            timesteps=50, sampling="fractional", sampling_fraction=10, use_metadata=False, vae_pretrain=True,
            dep_mask_mode="off")


def cfg_of(**kw):
    return config_from_dict({**TINY, **kw})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on two shared cores: a second torch thread makes each fit ~50x slower, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sets():
    data, _ = make_synthetic(n_samples=60, n_taxa=8, seed=0, n_directed=2, n_symmetric=2)
    other, _ = make_synthetic(n_samples=40, n_taxa=8, seed=1, n_directed=2, n_symmetric=2)
    other.name = "other"
    return data, other, make_split(data.normalized, seed=0)


def _dat_state(res):
    return {k: v.clone() for k, v in res.imputer.dat.state_dict().items()}


def test_hit_equals_miss_bit_for_bit(sets, tmp_path):
    data, other, split = sets
    cfg = cfg_of()
    miss = fit(cfg, data, split, pretrain=[other], vae_cache_dir=tmp_path)
    assert miss.vae_source == "trained" and len(list(tmp_path.glob("vae-*.safetensors"))) == 1
    hit = fit(cfg, data, split, pretrain=[other], vae_cache_dir=tmp_path)
    assert hit.vae_source == "cache" and hit.vae_seconds == 0.0
    plain = fit(cfg, data, split, pretrain=[other])  # no cache at all: the same stream as both
    assert plain.vae_source == "trained"
    for res in (hit, plain):
        assert res.test == miss.test and res.val == miss.val
        a, b = _dat_state(miss), _dat_state(res)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        va, vb = miss.imputer.vae.state_dict(), res.imputer.vae.state_dict()
        assert all(torch.equal(va[k], vb[k]) for k in va)
        np.testing.assert_array_equal(res.imputer.latent_std, miss.imputer.latent_std)
    # the DAT phase of a hit and a miss differs only if its RNG stream does: a different DAT seed shows it would
    other_seed = fit(cfg_of(seed=1), data, split, pretrain=[other], vae_cache_dir=tmp_path)
    assert other_seed.vae_source == "trained" and other_seed.test != miss.test


def test_shared_entries_are_used_without_a_directory(sets):
    data, other, split = sets
    cfg = cfg_of()
    view = training_view(data.normalized, split)
    entry, source = cached_vae_entry(cfg, view, split.observed, [other.normalized])
    assert source == "trained"
    res = fit(cfg, data, split, pretrain=[other], vae_entries={entry.key: entry})
    assert res.vae_source == "shared"
    plain = fit(cfg, data, split, pretrain=[other])
    assert res.test == plain.test


def test_key_follows_the_vae_inputs_only(sets):
    data, other, split = sets
    Y = data.normalized
    view, obs, pre = training_view(Y, split), split.observed, [other.normalized]
    base = vae_cache_key(cfg_of(), view, obs, pre)
    for k, v in dict(ar_decay=0.7, mi_threshold=0.3, f_threshold=5.0, sampling_fraction=5, dep_mask_mode="paper",
                     lr=3e-3, hidden_dim=32, epochs=9).items():
        assert vae_cache_key(cfg_of(**{k: v}), view, obs, pre) == base, k
    for k, v in dict(latent_dim=3, vae_hidden=8, vae_beta=0.01, vae_epochs=4, vae_lr=1e-3, batch_size=16,
                     train_mask_ratio=0.3, seed=1, vae_token_sample=64, vae_ema_decay=0.99,
                     vae_joint_finetune=True).items():
        assert vae_cache_key(cfg_of(**{k: v}), view, obs, pre) != base, k
    other_split = make_split(Y, seed=1)  # another held-out mask
    assert vae_cache_key(cfg_of(), training_view(Y, other_split), other_split.observed, pre) != base
    obs2 = obs.copy()
    obs2[0, np.flatnonzero(obs2[0])[0]] = False  # the same view with one more entry unobserved
    assert vae_cache_key(cfg_of(), view, obs2, pre) != base
    pre2 = [other.normalized.copy()]
    pre2[0][0, 0] += 1e-9
    assert vae_cache_key(cfg_of(), view, obs, pre2) != base
    assert vae_cache_key(cfg_of(), view, obs, []) != base
    assert vae_cache_key(cfg_of(vae_pretrain=False), view, obs, pre) != base
    # a field added later enters the key only away from its default, so entries trained before it stay hits
    assert "vae_joint_finetune" not in vae_settings(cfg_of())
    assert "vae_ema_decay" not in vae_settings(cfg_of()) and vae_settings(cfg_of(vae_ema_decay=0.99))["vae_ema_decay"] == 0.99
    # without pretraining the pretraining sets are not read, so they are not in the key
    assert vae_cache_key(cfg_of(vae_pretrain=False), view, obs, pre) == vae_cache_key(cfg_of(vae_pretrain=False), view, obs, pre2)
    # nor is the joint fine-tuning, which then trains exactly as without it (a single table: no sets to join)
    for p, c in ((pre, cfg_of(vae_pretrain=False)), ([], cfg_of())):
        joined = cfg_of(vae_pretrain=c.vae_pretrain, vae_joint_finetune=True)
        assert vae_cache_key(joined, view, obs, p) == vae_cache_key(c, view, obs, p)


def test_joint_finetune_keeps_the_pretraining_sets_beside_the_target(sets, monkeypatch):
    import depmicro.core.train.vae_phase as vae_phase

    data, other, split = sets
    view, obs, pre = training_view(data.normalized, split), split.observed, [other.normalized]
    rows, real = [], vae_phase.train_vae

    def spy(vae, pairs, **kw):
        rows.append([len(Y) for Y, _ in pairs])
        return real(vae, pairs, **kw)

    monkeypatch.setattr(vae_phase, "train_vae", spy)
    plain = vae_phase.train_vae_entry(cfg_of(), view, obs, pre)
    joint = vae_phase.train_vae_entry(cfg_of(vae_joint_finetune=True), view, obs, pre)
    assert rows == [[40], [60], [40], [60, 40]]  # pretraining, then fine-tuning: the target alone, or beside the other set
    assert any(not torch.equal(plain.state[k], joint.state[k]) for k in plain.state)
    # without pretraining nothing is joined: the same phase, bit for bit
    a = vae_phase.train_vae_entry(cfg_of(vae_pretrain=False, vae_joint_finetune=True), view, obs, pre)
    b = vae_phase.train_vae_entry(cfg_of(vae_pretrain=False), view, obs, pre)
    assert rows[4:] == [[60], [60]] and all(torch.equal(a.state[k], b.state[k]) for k in a.state)


def test_corrupt_entry_is_refused_and_retrained(sets, tmp_path):
    data, other, split = sets
    cfg = cfg_of(vae_pretrain=False)
    view = training_view(data.normalized, split)
    entry, source = cached_vae_entry(cfg, view, split.observed, cache_dir=tmp_path)
    path = entry_path(tmp_path, entry.key)
    good = path.read_bytes()
    bad = bytearray(good)
    bad[-5] ^= 0xFF  # a flipped bit in the last tensor's data: the header still parses
    path.write_bytes(bytes(bad))
    with pytest.raises(DepmicroError, match="corrupt") as exc:
        load_vae_entry(path, entry.key)
    assert "\n" not in str(exc.value)
    with pytest.warns(UserWarning, match="retraining"):
        again, source = cached_vae_entry(cfg, view, split.observed, cache_dir=tmp_path)
    assert source == "trained" and path.read_bytes() != bytes(bad)  # retrained and the file replaced
    reloaded = load_vae_entry(path, entry.key).state
    assert all(torch.equal(reloaded[k], entry.state[k]) for k in entry.state)
    path.write_bytes(good[:100])  # truncated
    with pytest.raises(DepmicroError, match="not a VAE cache entry"):
        load_vae_entry(path)
    # an entry under the wrong name (another key) is not used either
    foreign = entry_path(tmp_path, "0" * 64)
    foreign.write_bytes(good)
    with pytest.raises(DepmicroError, match="expected 000000000000"):
        load_vae_entry(foreign, "0" * 64)


def test_resume_takes_the_vae_from_the_checkpoint(sets, tmp_path):
    data, other, split = sets
    cfg = cfg_of(vae_pretrain=False, epochs=3)

    def on_epoch(rep):
        if rep.epoch == 1:
            rep.save_checkpoint(tmp_path / "ck")

    full = fit(cfg, data, split, on_epoch=on_epoch)
    resumed = fit(cfg, data, split, resume_from=tmp_path / "ck", vae_cache_dir=tmp_path / "unused")
    assert resumed.vae_source == "checkpoint" and not (tmp_path / "unused").exists()
    assert resumed.test == full.test
    va, vb = full.imputer.vae.state_dict(), resumed.imputer.vae.state_dict()
    assert all(torch.equal(va[k], vb[k]) for k in va)


def test_factor_rank_alt_keeps_the_rank_whose_encoder_scores_better_on_validation(sets, tmp_path):
    """vae_factor_rank_alt: fit trains the VAE at both ranks, scores each encoder alone on the validation mask, and
    goes on with the better one; the result is the plain fit at that rank (the DAT never sees the other VAE), and the
    chosen rank's VAE is trained once."""
    data, other, split = sets
    kw = dict(vae_epochs=30, vae_readout=True)
    res = fit(cfg_of(vae_factor_rank=4, vae_factor_rank_alt=1, **kw), data, split, pretrain=[other], vae_cache_dir=tmp_path)
    scores = res.factor_rank_scores
    assert set(scores) == {4, 1} and scores[4] != scores[1]
    chosen = max(scores, key=scores.get)
    assert res.imputer.cfg.vae_factor_rank == chosen and res.imputer.cfg.vae_factor_rank_alt == 0
    assert res.vae_source == "trained" and res.vae_seconds > 0
    assert len(list(tmp_path.glob("vae-*.safetensors"))) == 2  # one entry per rank, none trained twice
    # each score is that rank's own encoder on validation: the plain fits at each rank (cache hits) reproduce them
    for r in (4, 1):
        plain = fit(cfg_of(vae_factor_rank=r, **kw), data, split, pretrain=[other], vae_cache_dir=tmp_path)
        assert plain.vae_source == "cache"
        enc = plain.imputer.encoder_impute(training_view(data.normalized, split), split.observed)
        assert evaluate(data.normalized, enc, split.val)["pcc_per_microbe"] == pytest.approx(scores[r], abs=1e-12)
        if r == chosen:
            assert plain.test == res.test and plain.val == res.val
