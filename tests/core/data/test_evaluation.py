import numpy as np
import pytest
from scipy.stats import pearsonr

from depmicro.core.errors import DepmicroError
from depmicro.core.data.evaluation import evaluate, make_split, per_microbe_pcc, training_view


def _toy(seed=0, n=200, d=12):
    rng = np.random.default_rng(seed)
    Y = rng.gamma(2.0, 0.5, size=(n, d)) * (rng.random((n, d)) < 0.5)
    return Y


def test_split_holds_out_only_nonzero_entries_disjointly_and_is_seeded():
    Y = _toy()
    s = make_split(Y, seed=3, test_ratio=0.1, val_ratio=0.2)
    nnz = int((Y > 0).sum())
    assert not (s.test & s.val).any()
    assert (Y[s.test] > 0).all() and (Y[s.val] > 0).all()
    assert s.test.sum() == round(0.1 * nnz)
    assert s.val.sum() == round(0.2 * (nnz - s.test.sum()))
    assert np.array_equal(s.observed, ~(s.test | s.val))
    again = make_split(Y, seed=3, test_ratio=0.1, val_ratio=0.2)
    other = make_split(Y, seed=4, test_ratio=0.1, val_ratio=0.2)
    assert np.array_equal(s.test, again.test) and s.fingerprint() == again.fingerprint()
    assert not np.array_equal(s.test, other.test) and s.fingerprint() != other.fingerprint()


def test_training_view_hides_held_out_values():
    Y = _toy()
    s = make_split(Y, seed=0)
    V = training_view(Y, s)
    assert np.isnan(V[s.test]).all() and np.isnan(V[s.val]).all()
    assert np.array_equal(V[s.observed], Y[s.observed])


def test_metrics_match_direct_formulas():
    rng = np.random.default_rng(1)
    Y = _toy(1)
    s = make_split(Y, seed=1, test_ratio=0.3)
    P = Y + rng.normal(0, 0.3, Y.shape)
    m = evaluate(Y, P, s.test)
    t, p = Y[s.test], P[s.test]
    assert m["pcc"] == pytest.approx(pearsonr(t, p)[0], abs=1e-12)
    assert m["cos"] == pytest.approx(t @ p / np.linalg.norm(t) / np.linalg.norm(p), abs=1e-12)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((t - p) ** 2)))
    assert m["mae"] == pytest.approx(np.mean(np.abs(t - p)))
    per = [pearsonr(Y[s.test[:, j], j], P[s.test[:, j], j])[0] for j in range(Y.shape[1]) if s.test[:, j].sum() >= 5]
    assert m["pcc_per_microbe"] == pytest.approx(np.mean(per), abs=1e-12)
    assert m["n_microbes"] == len(per) and m["n_heldout"] == int(s.test.sum())
    assert np.nanmean(per_microbe_pcc(Y, P, s.test)) == pytest.approx(m["pcc_per_microbe"])


def test_perfect_and_constant_predictions():
    Y = _toy(2)
    s = make_split(Y, seed=2, test_ratio=0.3)
    perfect = evaluate(Y, Y, s.test)
    assert perfect["pcc"] == pytest.approx(1.0) and perfect["rmse"] == 0.0 and perfect["pcc_per_microbe"] == pytest.approx(1.0)
    const = evaluate(Y, np.ones_like(Y), s.test)
    assert const["pcc_per_microbe"] == 0.0


def test_bad_ratios_and_nan_predictions_are_errors():
    Y = _toy()
    with pytest.raises(DepmicroError, match="test ratio"):
        make_split(Y, test_ratio=1.5)
    s = make_split(Y)
    P = Y.copy()
    P[s.test] = np.nan
    with pytest.raises(DepmicroError, match="NaN"):
        evaluate(Y, P, s.test)


def test_metric_directions_have_one_home():
    """Selection (fit), study modes (spec) and analysis all read the direction from core/data/evaluation.py."""
    from depmicro.core.data.evaluation import LOWER_IS_BETTER, METRICS, better, direction
    from depmicro.core.model.config import _CHOICES

    assert LOWER_IS_BETTER <= set(METRICS) and _CHOICES["val_metric"] == METRICS
    assert [direction(m) for m in METRICS] == ["max", "max", "max", "min", "min"]
    assert better("rmse", 0.1, 0.2) and not better("rmse", 0.3, 0.2)
    assert better("pcc_per_microbe", 0.3, 0.2) and not better("pcc", 0.1, 0.2)
    assert better("mae", 0.5, None) and better("mae", 0.5, float("nan")) and not better("pcc", float("nan"), None)
    with pytest.raises(DepmicroError, match="unknown metric"):
        direction("auc")
