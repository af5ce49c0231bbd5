"""What the driver prepares once for a study: its trials load the VAE it trained (a study test),
and it trains VAEs ahead only when the search space leaves every VAE field alone."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from depmicro.studies.prepare import _searches_vae
from depmicro.studies.spec import load_spec
from tests.conftest import QUICKSTART, small_study


def test_study_trials_use_the_driver_vae(quickstart_run):
    """The quickstart study (session fixture, shared with the other study tests): one warm-up line
    and one cache entry for its one data key, and every trial that reported got the shipped VAE."""
    err = quickstart_run["stderr"]
    assert err.count("VAE for synthetic/s0") == 1
    cache = Path(quickstart_run["storage"]) / ".dep_cache"
    assert len(list(cache.glob("vae-*.safetensors"))) == 1
    exp = Path(quickstart_run["storage"]) / quickstart_run["name"]
    results = [json.loads(line) for f in exp.glob("*/result.json") for line in f.read_text().splitlines() if line.strip()]
    final = [r for r in results if "test_pcc" in r]
    assert final and all(r["vae_cached"] == 1 and r["vae_seconds"] == 0.0 for r in final)


def test_driver_warms_only_when_the_search_leaves_the_vae_alone(tmp_path):
    assert not _searches_vae(load_spec(QUICKSTART))
    path = small_study(tmp_path, "vae_search")
    raw = yaml.safe_load(path.read_text())
    raw["search_space"]["vae_epochs"] = {"type": "choice", "values": [2, 3]}
    path.write_text(yaml.safe_dump(raw))
    assert _searches_vae(load_spec(path))
