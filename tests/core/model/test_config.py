"""ModelConfig: one-line validation errors, YAML with typed overrides, the shipped configs."""
from __future__ import annotations

from dataclasses import replace

import pytest

from depmicro.core.errors import DepmicroError
from depmicro.core.model.config import config_from_dict, config_to_dict, load_config
from depmicro.core.train.vae_phase import vae_settings
from tests.helpers import REPO


def test_config_validation_errors_are_one_line():
    with pytest.raises(DepmicroError, match="unknown config key 'hiden_dim'"):
        config_from_dict({"hiden_dim": 8})
    for bad in ({"dep_mask_mode": "strict"}, {"ar_decay": 0.0}, {"ar_decay": 1.5}, {"epochs": 0}, {"lr": -1},
                {"dropout": 1.0}, {"hidden_dim": 30, "n_heads": 4}, {"sampling": "half"}, {"use_metadata": "maybe"},
                {"latent_dim": "four"}, {"train_mask_ratio": 1.0}, {"sampler_eta": 2}):
        with pytest.raises(DepmicroError) as err:
            config_from_dict(bad)
        assert "\n" not in str(err.value) and next(iter(bad)) in str(err.value)


def test_load_config_yaml_and_typed_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("hidden_dim: 32\nar_decay: 0.8\nuse_metadata: true\n")
    cfg = load_config(p, ["epochs=3", "use_metadata=false", "ar_decay=0.75", "sampling=adaptive"])
    assert (cfg.hidden_dim, cfg.epochs, cfg.use_metadata, cfg.ar_decay, cfg.sampling) == (32, 3, False, 0.75, "adaptive")
    assert config_from_dict(config_to_dict(cfg)) == cfg
    with pytest.raises(DepmicroError, match="not key=value"):
        load_config(p, ["epochs"])
    with pytest.raises(DepmicroError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("- a\n- b\n")
    with pytest.raises(DepmicroError, match="mapping"):
        load_config(tmp_path / "bad.yaml")


def test_shipped_configs_load():
    root = REPO / "studies" / "configs"
    tiny, paper = load_config(root / "tiny.yaml"), load_config(root / "paper.yaml")
    assert paper.timesteps == 1000 and paper.hidden_dim > tiny.hidden_dim
    small = load_config(root / "small.yaml")
    # tiny's VAE plus the readout, the factor layer, the EMA of the VAE's weights and fine-tuning beside the other sets
    assert vae_settings(small) == {**vae_settings(tiny), "vae_epochs": 150, "vae_readout": True, "vae_factor_rank": 64,
                                   "vae_factor_visible_weight": 1.0, "vae_ema_decay": 0.995, "vae_joint_finetune": True}
    assert vae_settings(paper) == vae_settings(small)  # paper.yaml is small.yaml's VAE under a wider DAT
    wide = load_config(root / "wide.yaml")  # small.yaml with a standardized VAE and partners, validated every third epoch
    assert vae_settings(wide) == {**vae_settings(small), "vae_standardize": True, "vae_partners": 8}
    assert replace(wide, vae_standardize=False, vae_partners=0, val_every=small.val_every) == small
    assert small.estimate == "mean" and small.train_steps > 0 and small.ema_decay > 0
