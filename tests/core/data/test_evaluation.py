import numpy as np
import pytest
from scipy.stats import pearsonr

from depmicro.core.errors import DepmicroError
from depmicro.core.data import normalize
from depmicro.core.data.baselines import BASELINES, impute_with_baseline
from depmicro.core.data.evaluation import Split, evaluate, make_split, per_microbe_pcc, protocol_matrix, training_view


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


# --- protocols ---------------------------------------------------------------------------------

def _counts_and_split(seed: int = 0):
    rng = np.random.default_rng(seed)
    counts = np.round(rng.gamma(1.5, 40.0, size=(50, 9))) * (rng.random((50, 9)) < 0.6)
    counts[:, 0] += 3  # no empty rows
    return counts, make_split(counts, seed=seed, test_ratio=0.2, val_ratio=0.1)


def _poisoned(counts, split):
    out = counts.copy()
    out[~split.observed] = np.random.default_rng(9).integers(1, 10**6, size=(~split.observed).sum())
    return out


def test_split_on_counts_equals_split_on_normalized_values():
    counts, split = _counts_and_split()
    assert make_split(normalize(counts), seed=0, test_ratio=0.2, val_ratio=0.1).fingerprint() == split.fingerprint()


def test_renormalized_scale_is_the_observed_rowsum():
    counts, split = _counts_and_split()
    R = protocol_matrix(counts, split, "renormalized")
    obs_sum = np.where(split.observed, counts, 0).sum(axis=1)
    i, j = np.argwhere(split.test)[0]
    assert R[i, j] == pytest.approx(np.log10(100 * counts[i, j] / obs_sum[i] + 1))
    # observed entries: the row renormalized over its observed entries alone (sum of relative abundances 100)
    rel = 10 ** np.where(split.observed, R, 0) - 1
    np.testing.assert_allclose(np.where(split.observed, rel, 0).sum(axis=1), 100.0)
    np.testing.assert_array_equal(protocol_matrix(counts, split, "paper"), normalize(counts))
    with pytest.raises(DepmicroError, match="unknown protocol 'loo'"):
        protocol_matrix(counts, split, "loo")


def test_renormalized_row_with_everything_held_out_falls_back_to_its_own_sum():
    counts = np.array([[5.0, 0.0, 5.0], [1.0, 1.0, 2.0]])
    split = Split(test=np.array([[True, False, True], [False, False, False]]), val=np.zeros((2, 3), bool),
                  seed=0, test_ratio=0.5, val_ratio=0.0)
    R = protocol_matrix(counts, split, "renormalized")
    np.testing.assert_allclose(R[0], normalize(counts)[0])


def test_renormalized_view_does_not_depend_on_held_out_counts_paper_view_does():
    """The leak the renormalized protocol closes: under paper, a held-out count moves the observed values."""
    counts, split = _counts_and_split()
    poisoned = _poisoned(counts, split)
    view = lambda c, p: training_view(protocol_matrix(c, split, p), split)  # noqa: E731
    np.testing.assert_array_equal(view(counts, "renormalized"), view(poisoned, "renormalized"))
    assert not np.allclose(np.nan_to_num(view(counts, "paper")), np.nan_to_num(view(poisoned, "paper")))


@pytest.mark.parametrize("method", BASELINES)
def test_renormalized_baselines_see_nothing_of_held_out_counts(method):
    counts, split = _counts_and_split(1)
    outs = []
    for c in (counts, _poisoned(counts, split)):
        Y = protocol_matrix(c, split, "renormalized")
        outs.append(impute_with_baseline(method, Y, split.observed, seed=0)[0])
    np.testing.assert_array_equal(outs[0], outs[1])
