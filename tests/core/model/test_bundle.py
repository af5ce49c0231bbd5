"""A model bundle exported before the package layout changed (commit 7416915, `depmicro export` of
the quickstart study) still loads and imputes what the old code wrote: the bundle format and the
sampler's random stream are unchanged. Equal to float32 rounding, not bit for bit: another CPU's
float32 kernels differ in the last bits (one machine of this project's kind gave 159 of 1,200 entries
up to 4.2e-7 apart), while a changed format or random stream moves entries by tenths."""
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
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-6, atol=1e-6)


def test_bundle_from_7416915_loads_with_its_config_and_taxa():
    imp = load_model(FIXTURE / "bundle")
    assert imp.D == 30 and imp.var_names[0] == "taxon_00" and imp.cfg.infer_ar_steps == 2 and imp.dep is not None
