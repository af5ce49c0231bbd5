"""Dependency statistics against the naive loops, in the same run and on the same pairs: statsmodels
OLS + compare_f_test per ordered pair, and scikit-learn mutual_info_regression (k = 3) per pair.
The naive methods are timed on a random sample of pairs and extrapolated per pair to all pairs
(the JSON says how many were timed); the project computes all pairs for real. Prints JSON.

    python tests/bench/deps.py [--sets coad stad hnsc] [--f-pairs 200] [--mi-pairs 100] [--ksg-sets coad]
        [--ceiling-sets coad --ceiling-pairs 300 --ceiling-seeds 20] [--large-n 1000 --large-d 1695]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np

from depmicro.core.data import load_dataset, normalize
from depmicro.core.deps import DepSettings, compute_dep_stats, f_statistics, mutual_information

TCMA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tcma"


def _sm_f(Y: np.ndarray, i: int, j: int) -> float:
    import statsmodels.api as sm

    y = Y[1:, i]
    r = sm.OLS(y, sm.add_constant(Y[:-1, [i]], has_constant="add")).fit()
    f = sm.OLS(y, sm.add_constant(Y[:-1][:, [i, j]], has_constant="add")).fit()
    return float(f.compare_f_test(r)[0])


def _pairs(Y: np.ndarray, k: int, seed: int) -> list[tuple[int, int]]:
    ok = np.flatnonzero((np.ptp(Y[:-1], axis=0) > 0) & (np.ptp(Y[1:], axis=0) > 0))
    rng = np.random.default_rng(seed)
    return [tuple(int(v) for v in rng.choice(ok, 2, replace=False)) for _ in range(k)]


def naive_f(Y: np.ndarray, pairs) -> tuple[np.ndarray, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _sm_f(Y, *pairs[0])  # warm-up: imports and first-call costs are not per-pair costs
        t0 = time.perf_counter()
        vals = np.array([_sm_f(Y, i, j) for i, j in pairs])
        return vals, (time.perf_counter() - t0) / len(pairs)


def naive_mi(Y: np.ndarray, pairs) -> tuple[np.ndarray, float]:
    from sklearn.feature_selection import mutual_info_regression

    mutual_info_regression(Y[:, [pairs[0][1]]], Y[:, pairs[0][0]], n_neighbors=3, random_state=0)  # warm-up
    t0 = time.perf_counter()
    vals = np.array([mutual_info_regression(Y[:, [j]], Y[:, i], n_neighbors=3, random_state=0)[0] for i, j in pairs])
    return vals, (time.perf_counter() - t0) / len(pairs)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_matrix(name: str, Y: np.ndarray, f_pairs: int, mi_pairs: int, repeats: int, permutations: int,
                 ksg: bool = False) -> dict:
    from scipy.stats import spearmanr

    n, D = Y.shape
    ordered, unordered = D * (D - 1), D * (D - 1) // 2
    compute_dep_stats(Y[:50], device="cpu")  # warm-up (torch, scipy imports)
    t_f = best_of(lambda: f_statistics(Y, device="cpu"), repeats)
    t_mi = best_of(lambda: mutual_information(Y, 8, device="cpu"), repeats)
    t_all = best_of(lambda: compute_dep_stats(Y, device="cpu"), repeats)
    F, _ = f_statistics(Y, device="cpu")
    mi, _ = mutual_information(Y, 8, device="cpu")
    fp = _pairs(Y, f_pairs, seed=0)
    ref_f, per_f = naive_f(Y, fp)
    ours_f = np.array([F[i, j] for i, j in fp])
    rel = np.abs(ours_f - ref_f) / np.maximum(np.abs(ref_f), 1e-12)
    mp = fp[:mi_pairs]
    ref_mi, per_mi = naive_mi(Y, mp)
    naive_f_all, naive_mi_all = per_f * ordered, per_mi * unordered
    out = {
        "dataset": name, "n_samples": n, "n_taxa": D,
        "project_seconds": {"f_all_pairs": round(t_f, 4), "mi_all_pairs": round(t_mi, 4), "all_statistics": round(t_all, 4)},
        "naive_timed_pairs": {"statsmodels_f": len(fp), "sklearn_mi": len(mp)},
        "naive_ms_per_pair": {"statsmodels_f": round(1e3 * per_f, 3), "sklearn_mi": round(1e3 * per_mi, 3)},
        "naive_seconds_extrapolated": {"statsmodels_f_all_ordered_pairs": round(naive_f_all, 1),
                                       "sklearn_mi_all_pairs": round(naive_mi_all, 1)},
        "speedup": {"f": round(naive_f_all / t_f, 1), "mi": round(naive_mi_all / t_mi, 1),
                    "all": round((naive_f_all + naive_mi_all) / t_all, 1)},
        "agreement": {"f_max_relative_error": float(rel.max()),
                      "mi_spearman_vs_sklearn": round(float(spearmanr(ref_mi, [mi[i, j] for i, j in mp])[0]), 3)},
    }
    if ksg:  # one run: all pairs cost about a minute here; [i, j] with i < j sees sklearn's seed-0 jitter exactly
        from depmicro.core.deps.ksg import ksg_mutual_information

        t0 = time.perf_counter()
        K = ksg_mutual_information(Y, seed=0, device="cpu")
        t_k = time.perf_counter() - t0
        ours_k = np.array([K[i, j] for i, j in mp])
        same = np.array([i < j for i, j in mp])
        out["project_seconds"]["mi_ksg_all_pairs"] = round(t_k, 2)
        out["speedup"]["mi_ksg"] = round(naive_mi_all / t_k, 1)
        out["agreement"]["mi_ksg_spearman_vs_sklearn"] = round(float(spearmanr(ref_mi, ours_k)[0]), 4)
        out["agreement"]["mi_ksg_max_abs_diff_same_jitter"] = float(np.abs(ours_k - ref_mi)[same].max())
    if permutations:
        t_p = best_of(lambda: mutual_information(Y, 8, n_permutations=permutations, device="cpu"), 1)
        out["project_seconds"][f"mi_with_{permutations}_permutations"] = round(t_p, 2)
        out["naive_seconds_extrapolated"][f"sklearn_mi_{permutations}_permutations"] = round(naive_mi_all * (permutations + 1), 1)
        out["speedup"][f"mi_{permutations}_permutations"] = round(naive_mi_all * (permutations + 1) / t_p, 1)
    return out


def reference_ceiling(name: str, Y: np.ndarray, n_pairs: int, seeds: int) -> dict:
    """How well scikit-learn agrees with itself. `mutual_info_regression` adds 1e-10-scale noise to
    break ties, and zero-inflated columns are mostly ties, so each random_state gives a different
    ranking. Any estimator that does not replay one run's exact noise can at best match the
    seed-averaged value, and it agrees with a single run only as well as that average does: the
    "seed vs mean of the other seeds" figure is the ceiling for "Spearman with one sklearn run"."""
    from scipy.stats import spearmanr
    from sklearn.feature_selection import mutual_info_regression

    D = Y.shape[1]
    rng = np.random.default_rng(0)
    upper = np.array([(i, j) for i in range(D) for j in range(i + 1, D)])
    pairs = upper[rng.choice(len(upper), min(n_pairs, len(upper)), replace=False)]
    t0 = time.perf_counter()
    R = np.array([[mutual_info_regression(Y[:, [j]], Y[:, i], n_neighbors=3, random_state=s)[0] for i, j in pairs]
                  for s in range(seeds)])
    t_sk = time.perf_counter() - t0
    rho = lambda a, b: float(spearmanr(a, b)[0])
    summary = lambda v: {"mean": round(float(np.mean(v)), 3), "min": round(float(np.min(v)), 3), "max": round(float(np.max(v)), 3)}
    loo = [rho(R[s], np.delete(R, s, 0).mean(0)) for s in range(seeds)]
    mi, _ = mutual_information(Y, 8, device="cpu")
    ours = mi[pairs[:, 0], pairs[:, 1]]
    half = seeds // 2
    return {
        "dataset": name, "pairs": len(pairs), "sklearn_seeds": seeds, "sklearn_seconds": round(t_sk, 1),
        "sklearn_fraction_clipped_to_zero": round(float((R == 0).mean()), 3),
        "spearman": {
            "sklearn_seed_vs_another_seed": summary([rho(R[s], R[s + 1]) for s in range(0, seeds - 1, 2)]),
            "sklearn_seed_vs_mean_of_other_seeds": summary(loo),
            f"sklearn_mean_of_{half}_vs_mean_of_other_{half}": round(rho(R[:half].mean(0), R[half:2 * half].mean(0)), 3),
            "binned_vs_one_seed": summary([rho(ours, R[s]) for s in range(seeds)]),
            f"binned_vs_mean_of_{seeds}_seeds": round(rho(ours, R.mean(0)), 3),
        },
        "pearson": {f"binned_vs_mean_of_{seeds}_seeds": round(float(np.corrcoef(ours, R.mean(0))[0, 1]), 3)},
    }


def random_zero_inflated(n: int, D: int, seed: int = 0, zero_fraction: float = 0.7) -> np.ndarray:
    """Counts with taxon-specific zero rates around zero_fraction, normalized like real data."""
    rng = np.random.default_rng(seed)
    rate = np.clip(rng.normal(zero_fraction, 0.15, D), 0.05, 0.99)
    counts = np.round(rng.lognormal(2.0, 1.5, (n, D))) * (rng.random((n, D)) > rate)
    return normalize(counts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sets", nargs="+", default=["coad", "stad", "hnsc"])
    ap.add_argument("--f-pairs", type=int, default=200)
    ap.add_argument("--mi-pairs", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--permutations", type=int, default=100, help="also time an MI permutation test on the first set")
    ap.add_argument("--ksg-sets", nargs="*", default=["coad"], help="also time the all-pairs KSG estimator on these sets")
    ap.add_argument("--ceiling-sets", nargs="*", default=["coad"],
                    help="also measure how well sklearn's MI agrees with itself across jitter seeds on these sets")
    ap.add_argument("--ceiling-pairs", type=int, default=300)
    ap.add_argument("--ceiling-seeds", type=int, default=20)
    ap.add_argument("--large-n", type=int, default=1000)
    ap.add_argument("--large-d", type=int, default=1695)
    args = ap.parse_args()

    import torch

    results = []
    for k, name in enumerate(args.sets):
        Y = load_dataset(TCMA / f"{name}.h5ad").normalized
        results.append(bench_matrix(name, Y, args.f_pairs, args.mi_pairs, args.repeats, args.permutations if k == 0 else 0,
                                    ksg=name in args.ksg_sets))
    ceiling = [reference_ceiling(name, load_dataset(TCMA / f"{name}.h5ad").normalized, args.ceiling_pairs, args.ceiling_seeds)
               for name in args.ceiling_sets]
    large = None
    if args.large_d > 0:
        Y = random_zero_inflated(args.large_n, args.large_d)
        t0 = time.perf_counter()
        stats = compute_dep_stats(Y, DepSettings(), device="cpu")
        t_all = time.perf_counter() - t0
        fp = _pairs(Y, 50, seed=1)
        ref_f, per_f = naive_f(Y, fp)
        rel = np.abs(np.array([stats.f_stat[i, j] for i, j in fp]) - ref_f) / np.maximum(np.abs(ref_f), 1e-12)
        _, per_mi = naive_mi(Y, fp[:20])
        D = args.large_d
        naive = per_f * D * (D - 1) + per_mi * D * (D - 1) // 2
        large = {"matrix": f"random zero-inflated {args.large_n} x {D} (seed 0, ~70% zeros), normalized",
                 "zero_fraction": round(float((Y == 0).mean()), 3),
                 "project_seconds_f_and_mi_all_pairs": round(t_all, 2),
                 "naive_timed_pairs": {"statsmodels_f": len(fp), "sklearn_mi": 20},
                 "naive_ms_per_pair": {"statsmodels_f": round(1e3 * per_f, 3), "sklearn_mi": round(1e3 * per_mi, 3)},
                 "naive_seconds_extrapolated": round(naive, 1),
                 "speedup": round(naive / t_all, 1),
                 "f_max_relative_error": float(rel.max())}
    print(json.dumps({
        "benchmark": "dependency statistics, project (torch closed form / binned MI) vs statsmodels + sklearn loops",
        "note": "naive methods timed on the listed number of random pairs in this run, extrapolated per pair to all pairs "
                "(F: D(D-1) ordered pairs, MI: D(D-1)/2 pairs); project timed on all pairs, best of --repeats",
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "load_average_1min": round(os.getloadavg()[0], 2)},
        "tcma": results,
        "mi_reference_ceiling": ceiling,
        "large": large,
        "targets": {"d106_all_statistics_under_1s": all(r["project_seconds"]["all_statistics"] < 1 for r in results),
                    "large_under_60s": None if large is None else large["project_seconds_f_and_mi_all_pairs"] <= 60,
                    "speedup_at_least_100x": all(r["speedup"]["all"] >= 100 for r in results)
                    and (large is None or large["speedup"] >= 100)},
    }, indent=2))


if __name__ == "__main__":
    main()
