"""The missing-mass projection (a protocol artifact, opt-in): what it must and must not change."""
from __future__ import annotations

import numpy as np

from depmicro.core.data.dataset import normalize
from depmicro.core.data.projection import project_missing_mass


def test_projection_restores_each_rows_mass_and_keeps_shares_and_observed():
    rng = np.random.default_rng(0)
    counts = rng.poisson(20, size=(6, 7)).astype(float) * (rng.random((6, 7)) < 0.7)
    counts[:, 0] += 5
    counts[5] = 0  # an empty row stays as it is
    Y = normalize(counts)
    missing = (counts > 0) & (rng.random(counts.shape) < 0.4)
    missing[0, :] = False
    missing[0, 1:3] = counts[0, 1:3] > 0  # at most two hidden entries in row 0
    missing[1] = False
    missing[1, 0] = True  # row 1: one hidden entry, so its value is fixed by the rest
    observed = ~missing
    guess = np.where(observed, Y, 0.5)
    assert missing[2].sum() >= 2
    guess[2][missing[2]] = np.linspace(0.2, 0.9, missing[2].sum())
    out = project_missing_mass(np.where(observed, Y, np.nan), observed, guess)
    np.testing.assert_array_equal(out[observed], Y[observed])
    nonempty = counts.sum(1) > 0
    np.testing.assert_allclose((10 ** out[nonempty] - 1).sum(1), 100.0, rtol=1e-9)  # every nonempty row is whole again
    np.testing.assert_allclose(out[1, 0], Y[1, 0], rtol=1e-9)  # one hidden entry: recovered exactly
    rel_in, rel_out = 10 ** guess[2][missing[2]] - 1, 10 ** out[2][missing[2]] - 1
    np.testing.assert_allclose(rel_out / rel_out.sum(), rel_in / rel_in.sum(), rtol=1e-9)  # shares kept
    np.testing.assert_array_equal(out[5], guess[5])
    zero = project_missing_mass(Y, observed, np.where(observed, Y, 0.0))  # nothing imputed: shared evenly
    r = 10 ** zero[2][missing[2]] - 1
    assert np.allclose(r, r[0]) and r[0] > 0
