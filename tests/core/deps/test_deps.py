"""Dependency statistics: F equals statsmodels, MI ranks agree with scikit-learn, planted edges are
recovered, held-out truth cannot reach the statistics, and the cache behaves (the `depmicro deps`
command: tests/core/cli/test_deps_command.py)."""
from __future__ import annotations

import numpy as np
import pytest

from depmicro.core.data import load_dataset
from depmicro.core.deps import (DepSettings, DepStats, benjamini_hochberg, bin_codes, cache_key, cached_dep_stats,
                                compute_dep_stats, dep_stats_from_npz, dep_stats_to_npz, dependency_mask, f_statistics,
                                mutual_information, order_from_metadata)
from depmicro.core.errors import DepmicroError
from depmicro.core.data.evaluation import make_split, training_view
from depmicro.core.data.synthetic import make_synthetic, write_synthetic
from tests.helpers import TCMA_SETS, tcma_path


def _statsmodels_f(Y: np.ndarray, i: int, j: int, lag: int = 1) -> tuple[float, float]:
    import statsmodels.api as sm

    y = Y[lag:, i]
    restricted = sm.OLS(y, sm.add_constant(Y[:-lag, [i]], has_constant="add")).fit()
    full = sm.OLS(y, sm.add_constant(Y[:-lag][:, [i, j]], has_constant="add")).fit()
    F, p, _ = full.compare_f_test(restricted)
    return float(F), float(p)


def _random_pairs(Y: np.ndarray, k: int, seed: int, lag: int = 1) -> list[tuple[int, int]]:
    """Ordered pairs of columns that vary in both the lagged and the target window (statsmodels'
    design is rank-deficient on a constant one and its F is 0/0; ours is 0 there, tested below)."""
    ok = np.flatnonzero((np.ptp(Y[:-lag], axis=0) > 0) & (np.ptp(Y[lag:], axis=0) > 0))
    rng = np.random.default_rng(seed)
    return [tuple(int(v) for v in rng.choice(ok, 2, replace=False)) for _ in range(k)]


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic(seed=0)


# --- F ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TCMA_SETS)
def test_f_equals_statsmodels_on_tcma(name):
    Y = load_dataset(tcma_path(name)).normalized
    F, p = f_statistics(Y, lag=1, device="cpu")
    pairs = _random_pairs(Y, 200, seed=TCMA_SETS.index(name))
    ref = np.array([_statsmodels_f(Y, i, j) for i, j in pairs])
    ours = np.array([(F[i, j], p[i, j]) for i, j in pairs])
    rel = np.abs(ours[:, 0] - ref[:, 0]) / np.maximum(np.abs(ref[:, 0]), 1e-12)
    assert rel.max() <= 1e-6, f"{name}: max relative F error {rel.max():.2e}"
    np.testing.assert_allclose(ours[:, 1], ref[:, 1], rtol=1e-6, atol=1e-12)
    assert (ref[:, 0] > 0).mean() > 0.9  # the pairs are informative, not a pile of zeros


def test_f_lag_and_order_match_statsmodels(synthetic):
    ds, _ = synthetic
    Y = ds.normalized
    F2, p2 = f_statistics(Y, lag=2, device="cpu")
    for i, j in _random_pairs(Y, 20, seed=3, lag=2):
        F, p = _statsmodels_f(Y, i, j, lag=2)
        assert F2[i, j] == pytest.approx(F, rel=1e-7) and p2[i, j] == pytest.approx(p, rel=1e-6)
    order = np.random.default_rng(0).permutation(Y.shape[0])
    by_order = compute_dep_stats(Y, order=order, device="cpu")
    direct = compute_dep_stats(Y[order], device="cpu")
    np.testing.assert_array_equal(by_order.f_stat, direct.f_stat)
    assert not np.allclose(by_order.f_stat, compute_dep_stats(Y, device="cpu").f_stat)


def test_constant_columns_give_f_zero_p_one():
    rng = np.random.default_rng(1)
    Y = rng.random((60, 5)) * (rng.random((60, 5)) > 0.4)
    Y[:, 1] = 0.0
    Y[:, 3] = 0.7
    F, p = f_statistics(Y, device="cpu")
    for c in (1, 3):
        assert (F[c] == 0).all() and (F[:, c] == 0).all() and (p[c] == 1).all() and (p[:, c] == 1).all()
    assert np.isfinite(F).all() and (F[np.ix_([0, 2, 4], [0, 2, 4])][~np.eye(3, dtype=bool)] > 0).all()
    assert (np.diag(F) == 0).all()


# --- MI -----------------------------------------------------------------------------------------

def _plugin_mi(a: np.ndarray, b: np.ndarray, correction: bool) -> float:
    """Plain per-pair plug-in MI on the same codes, written the slow obvious way."""
    n = a.size
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    p = table / n
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
    if correction:
        mi -= ((table > 0).sum() - (pa > 0).sum() - (pb > 0).sum() + 1) / (2 * n)
    return max(mi, 0.0)


def test_mi_equals_per_pair_plugin_and_is_symmetric(synthetic):
    Y = synthetic[0].normalized
    codes = bin_codes(Y, 8)
    for correction in (True, False):
        mi, _ = mutual_information(Y, 8, correction=correction, device="cpu")
        assert np.allclose(mi, mi.T) and (np.diag(mi) == 0).all() and (mi >= 0).all()
        for i, j in _random_pairs(Y, 30, seed=5):
            assert mi[i, j] == pytest.approx(_plugin_mi(codes[:, i], codes[:, j], correction), abs=1e-9)


def test_bin_codes_zero_bin_and_ties():
    Y = np.array([[0, 1.0], [0.5, 1.0], [0.2, 0], [0.9, 1.0], [0.5, 2.0], [0, 3.0], [0.7, 0.0], [0.1, 1.0], [0.5, 4.0]])
    c = bin_codes(Y, 8)
    assert ((c == 0) == (Y == 0)).all()
    for col in range(2):  # equal values share a bin; the order of values is kept
        v, k = Y[:, col], c[:, col]
        for a in range(len(v)):
            for b in range(len(v)):
                if v[a] == v[b]:
                    assert k[a] == k[b]
                if 0 < v[a] < v[b]:
                    assert k[a] <= k[b]
    assert c[:, 0].max() == 2  # six nonzero values: round(6^(1/3)) = 2 bins


def test_mi_rank_agrees_with_sklearn_on_coad():
    from scipy.stats import spearmanr
    from sklearn.feature_selection import mutual_info_regression

    Y = load_dataset(tcma_path("coad")).normalized
    mi = compute_dep_stats(Y, device="cpu").mi
    pairs = _random_pairs(Y, 200, seed=0)
    # sklearn jitters ties (every zero) with random noise, so one call is noisy; average 2 seeds
    ref = np.mean([[mutual_info_regression(Y[:, [j]], Y[:, i], n_neighbors=3, random_state=s)[0] for i, j in pairs]
                   for s in (0, 1)], axis=0)
    rho = spearmanr(ref, [mi[i, j] for i, j in pairs])[0]
    print(f"MI Spearman vs mutual_info_regression (2-seed mean), 200 COAD pairs: {rho:.3f}")
    assert rho >= 0.6  # measured 0.64; the issue asked for 0.9, which this estimator does not reach (see README, Dependency statistics)


def test_ksg_equals_sklearn_on_coad_pairs():
    """The KSG option reproduces mutual_info_regression(k=3) pair for pair when it sees the same jitter
    seeds, so its ranks agree (the issue's Spearman >= 0.9); averaged over 2 seeds on both sides."""
    from scipy.stats import spearmanr
    from sklearn.feature_selection import mutual_info_regression

    from depmicro.core.deps.ksg import ksg_mutual_information

    Y = load_dataset(tcma_path("coad")).normalized
    ok = np.flatnonzero(np.ptp(Y, axis=0) > 0)
    cols = np.sort(np.random.default_rng(0).choice(ok, 21, replace=False))  # all 210 pairs of 21 random taxa
    mi = ksg_mutual_information(Y[:, cols], seed=0, repeats=2, device="cpu", memory_bytes=100_000_000)
    iu, ju = np.triu_indices(len(cols), k=1)
    ref = np.mean([[mutual_info_regression(Y[:, [cols[j]]], Y[:, cols[i]], n_neighbors=3, random_state=s)[0]
                    for i, j in zip(iu, ju)] for s in (0, 1)], axis=0)
    ours = mi[iu, ju]
    rho = spearmanr(ref, ours)[0]
    print(f"KSG Spearman vs mutual_info_regression (same 2 seeds), {len(iu)} COAD pairs: {rho:.4f}")
    assert rho >= 0.9
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)  # exact, not merely rank-similar
    assert np.array_equal(mi, mi.T) and not mi.diagonal().any() and (ours > 0.05).sum() >= 10


def test_ksg_counts_are_exact_at_ties_and_wired_into_settings(tmp_path, synthetic):
    import torch

    from depmicro.core.deps.ksg import _count_within, ksg_pairs

    rng = np.random.default_rng(1)
    v = torch.as_tensor(rng.integers(0, 6, size=(5, 40)).astype(np.float64) * 0.1)  # many exact ties and boundaries
    r = torch.as_tensor(rng.integers(0, 4, size=(5, 40)) * 0.1)
    brute = ((v[:, :, None] - v[:, None, :]).abs() <= r[:, :, None]).sum(-1).to(torch.float64)
    assert torch.equal(_count_within(torch.sort(v, -1).values, v, r), brute)
    x = torch.as_tensor(rng.standard_normal((2, 300)))
    y = torch.stack([x[0] + 0.1 * torch.as_tensor(rng.standard_normal(300)), torch.as_tensor(rng.standard_normal(300))])
    dep, indep = ksg_pairs(x, y).tolist()
    assert dep > 1.0 and indep < 0.05  # true MI of the first pair: 0.5 log(1 + 100) = 2.3 nats

    ds, _ = synthetic
    ksg = DepSettings(mi_estimator="ksg", mi_jitter_repeats=2)
    stats = compute_dep_stats(ds.normalized[:60, :8], ksg, device="cpu")
    binned = compute_dep_stats(ds.normalized[:60, :8], device="cpu")
    assert np.array_equal(stats.f_stat, binned.f_stat) and not np.allclose(stats.mi, binned.mi)
    assert cache_key(ds.normalized, ksg) != cache_key(ds.normalized, DepSettings())
    for bad, msg in [(dict(mi_estimator="kde"), "kde"), (dict(mi_jitter_repeats=0), "mi_jitter_repeats"),
                     (dict(mi_estimator="ksg", n_permutations=10), "binned")]:
        with pytest.raises(DepmicroError, match=msg):
            DepSettings(**bad)


def test_permutation_pvalues_calibrated_and_find_dependence():
    rng = np.random.default_rng(2)
    n, D = 200, 24
    Y = rng.lognormal(size=(n, D)) * (rng.random((n, D)) > 0.5)
    shared = rng.standard_normal(n)
    Y[:, 0] = np.exp(shared) * (rng.random(n) > 0.3)
    Y[:, 1] = np.exp(shared + 0.3 * rng.standard_normal(n)) * (rng.random(n) > 0.3)
    _, p = mutual_information(Y, 8, n_permutations=99, seed=0, device="cpu")
    assert p[0, 1] == pytest.approx(1 / 100) and np.allclose(p, p.T)
    null = p[2:, 2:][np.triu_indices(D - 2, 1)]
    assert 0.01 <= (null <= 0.05).mean() <= 0.12  # about 5% under independence
    assert (null > 0.5).mean() > 0.3


# --- planted dependencies -----------------------------------------------------------------------

def _precision_recall(pred: set, true: set) -> tuple[float, float]:
    tp = len(pred & true)
    return tp / max(len(pred), 1), tp / max(len(true), 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_edges_recovered(seed):
    ds, truth = make_synthetic(seed=seed)
    stats = compute_dep_stats(ds.normalized, device="cpu")
    D = ds.n_taxa
    off = ~np.eye(D, dtype=bool)
    c_dir = dependency_mask(stats, f_alpha=0.01, fdr=True) & off
    c_mi = dependency_mask(stats, mi_threshold=0.1) & off
    pd_, rd = _precision_recall({(int(i), int(j)) for i, j in zip(*np.nonzero(c_dir))}, set(truth.directed))
    ps, rs = _precision_recall({(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(c_mi)))}, set(truth.symmetric))
    print(f"seed {seed}: directed precision {pd_:.2f} recall {rd:.2f}; symmetric precision {ps:.2f} recall {rs:.2f}")
    assert pd_ >= 0.8 and rd >= 0.8 and ps >= 0.8 and rs >= 0.8
    dep = dependency_mask(stats, 3.84, 0.1)
    assert all(dep[i, j] for i, j in truth.directed) and all(dep[a, b] and dep[b, a] for a, b in truth.symmetric)


def test_synthetic_is_seeded_and_round_trips(tmp_path, synthetic):
    ds, truth = synthetic
    again, truth2 = make_synthetic(seed=0)
    assert np.array_equal(ds.counts, again.counts) and truth == truth2
    assert not np.array_equal(ds.counts, make_synthetic(seed=1)[0].counts)
    assert 0.3 < (ds.counts == 0).mean() < 0.7 and ds.n_samples == 300 and ds.n_taxa == 30
    kind = ds.metadata["sample_type"].to_numpy() == "Solid Tissue Normal"
    Y = ds.normalized
    for s in truth.shifted:
        assert Y[kind, s].mean() > Y[~kind, s].mean() + 0.1
    path = write_synthetic(tmp_path / "syn.h5ad", seed=0)
    loaded = load_dataset(path)
    assert np.array_equal(loaded.counts, ds.counts) and loaded.var_names == ds.var_names
    assert list(loaded.metadata["sample_type"]) == list(ds.metadata["sample_type"])
    with pytest.raises(DepmicroError):
        make_synthetic(n_taxa=10)


# --- held-out entries ---------------------------------------------------------------------------

def test_heldout_truth_cannot_reach_statistics(synthetic):
    Y = synthetic[0].normalized
    split = make_split(Y, seed=0)
    view = training_view(Y, split)
    stats = compute_dep_stats(view, device="cpu")
    Y2 = Y.copy()
    Y2[split.test] += 5.0  # different truth at every held-out position
    Y2[split.val] = 0.0
    view2 = training_view(Y2, split)
    again = compute_dep_stats(view2, device="cpu")
    np.testing.assert_array_equal(stats.f_stat, again.f_stat)
    np.testing.assert_array_equal(stats.mi, again.mi)
    assert cache_key(view) == cache_key(view2)
    # NaN reads as 0 (documented), yet the held-out pattern is part of the key
    zero = compute_dep_stats(np.nan_to_num(view, nan=0.0), device="cpu")
    np.testing.assert_array_equal(stats.f_stat, zero.f_stat)
    assert cache_key(view) != cache_key(np.nan_to_num(view, nan=0.0))
    assert cache_key(view) != cache_key(training_view(Y, make_split(Y, seed=1)))
    assert not np.allclose(stats.f_stat, compute_dep_stats(Y, device="cpu").f_stat)  # the truth would change them


# --- mask ---------------------------------------------------------------------------------------

def _toy_stats() -> DepStats:
    F = np.array([[0, 5.0, 1.0], [2.0, 0, 0.5], [9.0, 0.1, 0]])
    fp = np.array([[1, 0.02, 0.3], [0.1, 1, 0.5], [0.001, 0.8, 1]])
    mi = np.array([[0, 0.05, 0.3], [0.05, 0, 0.2], [0.3, 0.2, 0]])
    mip = np.array([[1, 0.5, 0.01], [0.5, 1, 0.04], [0.01, 0.04, 1]])
    return DepStats(F, fp, mi, mip, ["a", "b", "c"], 0.0)


def test_dependency_mask_semantics():
    s = _toy_stats()
    dep = dependency_mask(s, f_threshold=3.0)
    assert dep.tolist() == [[True, True, False], [False, True, False], [True, False, True]]  # Dep[i, j]: F of j -> i
    dep = dependency_mask(s, f_threshold=3.0, mi_threshold=0.25)
    assert dep[0, 2] and dep[2, 0] and not dep[1, 2]
    assert dependency_mask(s).tolist() == np.eye(3, dtype=bool).tolist()
    both = dependency_mask(s, f_threshold=3.0, f_alpha=0.01)  # both criteria must hold
    assert both[2, 0] and not both[0, 1]
    assert dependency_mask(s, mi_alpha=0.03)[0, 2] and not dependency_mask(s, mi_alpha=0.03)[1, 2]
    assert not dependency_mask(s, mi_alpha=0.03, fdr=True)[1, 2]
    for bad in (dict(f_threshold=-1.0), dict(mi_threshold=float("nan")), dict(f_alpha=1.5)):
        with pytest.raises(DepmicroError):
            dependency_mask(s, **bad)
    with pytest.raises(DepmicroError, match="permutation"):
        dependency_mask(DepStats(s.f_stat, s.f_pvalue, s.mi, None, s.var_names, 0.0), mi_alpha=0.05)


def test_benjamini_hochberg_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(0).random(300) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1], rtol=1e-12)


# --- cache and files ----------------------------------------------------------------------------

def test_cache_computes_once_and_survives_corruption(tmp_path, monkeypatch, synthetic):
    import depmicro.core.deps.cache as deps_cache

    Y = training_view(synthetic[0].normalized, make_split(synthetic[0].normalized, seed=0))
    first = cached_dep_stats(Y, cache_dir=tmp_path, var_names=synthetic[0].var_names)
    files = list(tmp_path.glob("deps-*.npz"))
    assert len(files) == 1 and oct(files[0].stat().st_mode & 0o777) == "0o644"
    calls = []
    real = deps_cache.compute_dep_stats
    monkeypatch.setattr(deps_cache, "compute_dep_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = cached_dep_stats(Y, cache_dir=tmp_path)
    assert calls == [] and np.array_equal(again.f_stat, first.f_stat) and again.var_names == first.var_names
    assert cache_key(Y, DepSettings(lag=np.int64(1))) == cache_key(Y)
    cached_dep_stats(Y, DepSettings(mi_bins=4), cache_dir=tmp_path)  # settings are in the key
    assert calls == [1] and len(list(tmp_path.glob("deps-*.npz"))) == 2
    files[0].write_bytes(b"not an npz")
    fixed = cached_dep_stats(Y, cache_dir=tmp_path)
    assert calls == [1, 1] and np.array_equal(fixed.mi, first.mi)
    monkeypatch.setenv("DEPMICRO_CACHE", str(tmp_path / "env"))
    cached_dep_stats(Y)
    assert len(list((tmp_path / "env").glob("deps-*.npz"))) == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_npz_round_trip_and_bad_file(tmp_path):
    s = _toy_stats()
    dep_stats_to_npz(s, tmp_path / "s.npz", dep=np.eye(3, dtype=bool))
    back = dep_stats_from_npz(tmp_path / "s.npz")
    assert back.var_names == ["a", "b", "c"] and np.array_equal(back.mi_pvalue, s.mi_pvalue)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        assert z["var_names"].dtype.kind == "U" and z["dep"].dtype == bool
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(DepmicroError):
        dep_stats_from_npz(tmp_path / "bad.npz")
    obj = tmp_path / "obj.npz"
    np.savez(obj, f_stat=np.array([object()], dtype=object))
    with pytest.raises(DepmicroError):
        dep_stats_from_npz(obj)


def test_order_by_metadata(synthetic):
    import pandas as pd

    meta = pd.DataFrame({"stage": ["b", "a", None, "a"], "day": ["10", "9", "1", "2"]})
    assert order_from_metadata(meta, "stage").tolist() == [1, 3, 0, 2]
    assert order_from_metadata(meta, "day").tolist() == [2, 3, 1, 0]  # numeric, not text order
    with pytest.raises(DepmicroError, match="unknown metadata column"):
        order_from_metadata(meta, "nope")
    ds = synthetic[0]
    s = compute_dep_stats(ds.normalized, DepSettings(order_by="sample_type"), metadata=ds.metadata, device="cpu")
    o = order_from_metadata(ds.metadata, "sample_type")
    np.testing.assert_array_equal(s.f_stat, compute_dep_stats(ds.normalized[o], device="cpu").f_stat)
    with pytest.raises(DepmicroError):
        compute_dep_stats(ds.normalized, DepSettings(order_by="sample_type"))
