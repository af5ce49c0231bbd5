"""A model bundle exported before the package layout changed (commit 7416915, `depmicro export` of
the quickstart study) still loads and imputes exactly what the old code wrote: the bundle format
and the sampler's random stream are unchanged."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd

from depmicro.core.cli import main
from depmicro.core.model.bundle import load_model
from tests.helpers import REPO

FIXTURE = REPO / "tests" / "fixtures" / "bundle_7416915"


def test_bundle_from_7416915_imputes_exactly_as_before(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(FIXTURE / "bundle", bundle)
    out = tmp_path / "filled.csv"
    assert main(["impute", "--model", str(bundle), "--data", str(FIXTURE / "input.csv"), "--out", str(out)]) == 0
    got = pd.read_csv(out, index_col=0)
    want = pd.read_csv(FIXTURE / "expected.csv", index_col=0)
    assert list(got.columns) == list(want.columns) and list(got.index) == list(want.index)
    missing = pd.read_csv(FIXTURE / "input.csv", index_col=0).isna().to_numpy()
    assert missing.sum() > 0  # the fixture has entries to fill, so the comparison covers the sampler
    np.testing.assert_array_equal(got.to_numpy(), want.to_numpy())  # exact: same bytes in, same floats out


def test_bundle_from_7416915_loads_with_its_config_and_taxa():
    imp = load_model(FIXTURE / "bundle")
    assert imp.D == 30 and imp.var_names[0] == "taxon_00" and imp.cfg.infer_ar_steps == 2 and imp.dep is not None
