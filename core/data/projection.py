"""An optional post-step that rescales a row's imputed entries to the relative mass the row is missing.

Why it exists, and why it is not on by default: under the held-out protocol the matrix is
normalized (Eq. 10-11, Y = log10(100 * M / rowsum + 1)) before entries are hidden, so in every
nonempty row sum(10^Y - 1) over all entries is 100 and the observed entries fix the total relative
abundance of the hidden ones (README, "a property of this protocol"). Regression imputers exploit
that implicitly; this makes it explicit. On genuinely missing data, whose rows are normalized over
their observed counts, the observed mass is already 100 and the constraint does not exist: there
the projection would zero every imputed entry, so it is for protocol comparisons only, applied to
baselines and DepMicroDiff alike (tests/bench/compare.py --projection).
"""
from __future__ import annotations

import numpy as np

TOTAL = 100.0


def project_missing_mass(Y: np.ndarray, observed: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Scale each row's imputed relative masses (10^v - 1) so they sum to 100 minus its observed mass.

    Shares between a row's missing entries keep the imputer's proportions; a row whose imputed
    entries are all zero shares its missing mass evenly. Rows with no observed mass (empty rows)
    and rows with nothing missing are left as they are. Observed entries never change.
    """
    Y = np.asarray(Y, dtype=np.float64)
    observed = np.asarray(observed, dtype=bool)
    filled = np.asarray(filled, dtype=np.float64)
    missing = ~observed
    obs_mass = np.where(observed, np.power(10.0, np.nan_to_num(Y)) - 1.0, 0.0).sum(1)
    rest = np.clip(TOTAL - obs_mass, 0.0, TOTAL)
    rel = np.where(missing, np.clip(np.power(10.0, filled) - 1.0, 0.0, None), 0.0)
    tot = rel.sum(1)
    n_miss = missing.sum(1)
    even = np.where(missing, (rest / np.maximum(n_miss, 1))[:, None], 0.0)
    scaled = np.where(tot[:, None] > 0, rel * (rest / np.where(tot > 0, tot, 1.0))[:, None], even)
    apply = (obs_mass > 0) & (n_miss > 0)
    out = np.where(missing & apply[:, None], np.log10(scaled + 1.0), filled)
    return np.where(observed, np.nan_to_num(Y), out)
