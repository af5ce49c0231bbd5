import numpy as np
import pytest

from depmicro.core.data.baselines import make_baseline
from depmicro.core.data import load_dataset
from depmicro.core.errors import DepmicroError
from depmicro.core.imputer import Imputer
from depmicro.core.data.evaluation import evaluate, make_split, training_view
from tests.helpers import tcma_path


def test_mean_imputer_uses_observed_nonzero_values_only():
    Y = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [9.0, 0.0]])
    observed = np.array([[True, True], [True, True], [True, False], [False, True]])
    out = make_baseline("mean").fit(Y, observed).impute(Y, observed)
    assert out[3, 0] == pytest.approx(2.0)  # mean of 1 and 3: the zero and the held-out 9 are ignored
    assert out[2, 1] == pytest.approx(2.0)  # only the observed nonzero 2
    assert np.array_equal(out[observed], Y[observed])


@pytest.mark.parametrize("method", ["mean", "knn", "iterative"])
def test_baselines_never_read_held_out_values_and_keep_observed(method):
    rng = np.random.default_rng(0)
    Y = rng.gamma(2.0, 0.5, size=(60, 8)) * (rng.random((60, 8)) < 0.6)
    s = make_split(Y, seed=0, test_ratio=0.2)
    imp = make_baseline(method, seed=0)
    assert isinstance(imp, Imputer)
    a = imp.fit(training_view(Y, s), s.observed).impute(training_view(Y, s), s.observed)
    poisoned = Y.copy()
    poisoned[~s.observed] = 1e6  # if any held-out truth leaked in, results would change
    b = make_baseline(method, seed=0).fit(poisoned, s.observed).impute(poisoned, s.observed)
    assert np.allclose(a, b)
    assert np.array_equal(a[s.observed], Y[s.observed])
    assert np.isfinite(a).all()


def test_unknown_baseline_is_an_error():
    with pytest.raises(DepmicroError, match="unknown baseline 'svd'"):
        make_baseline("svd")


def test_knn_on_coad_is_in_the_expected_range():
    """Scale check from the foundation issue: KNN global PCC around 0.9 under this protocol."""
    ds = load_dataset(tcma_path("coad"))
    Y = ds.normalized
    s = make_split(Y, seed=0)
    knn = evaluate(Y, make_baseline("knn").impute(Y, s.observed), s.test)
    mean = evaluate(Y, make_baseline("mean").fit(Y, s.observed).impute(Y, s.observed), s.test)
    assert 0.9 < knn["pcc"] < 0.99
    assert knn["pcc_per_microbe"] > mean["pcc_per_microbe"] + 0.3
    assert knn["n_microbes"] == 99 and knn["n_heldout"] == 2188
