"""studies/example_full.yaml is the documented example of every study key: it must stay valid and complete."""
from __future__ import annotations

import re

import yaml

from depmicro.studies.spec import TOP_KEYS, load_spec
from tests.helpers import REPO

EXAMPLE = REPO / "studies" / "example_full.yaml"


def test_example_uses_every_key_and_loads():
    raw = yaml.safe_load(EXAMPLE.read_text())
    assert set(raw) == set(TOP_KEYS)
    spec = load_spec(EXAMPLE)
    assert spec.inference.default == {"sampling_fraction": 20, "sampler_eta": 0.0} and len(spec.inference.settings()) == 6
    assert spec.time_budget_s == 7200 and spec.max_trial_seconds == 900
    assert spec.warm_start.study == "quickstart" and spec.confirm.seeds == (5, 6)


def test_readme_documents_every_key():
    readme = (REPO / "studies" / "README.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)`", readme, flags=re.M))
    documented |= {k for row in re.findall(r"^\| `([a-z_]+)`, `([a-z_]+)`", readme, flags=re.M) for k in row}
    assert set(TOP_KEYS) <= documented, sorted(set(TOP_KEYS) - documented)
