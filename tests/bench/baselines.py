"""The foundation's reference table: mean / knn / iterative on the three TCMA sets under the
protocol (test mask, seed 0 by default). Prints JSON, and a Markdown table with --markdown.

    python tests/bench/baselines.py [--seeds 0 1 2] [--protocol paper renormalized] [--markdown]
    python tests/bench/baselines.py --wide [--methods iterative missforest]   # kraken_like 1,000 x 1,700

--wide scores the baselines with their defaults on a synthetic table of the Kraken-TCGA shape: the
row that sets the wide-table defaults (n_nearest_features, max_iter) so a study's baselines finish
in minutes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from depmicro.core.data.baselines import BASELINES, impute_with_baseline
from depmicro.core.data import load_dataset
from depmicro.core.data.evaluation import PROTOCOLS, evaluate, make_split, protocol_matrix

TCMA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tcma"


def run(sets: list[str], seeds: list[int], protocols: tuple[str, ...] = ("paper",), methods: tuple[str, ...] = BASELINES) -> list[dict]:
    rows = []
    for name in sets:
        counts = load_dataset(TCMA / f"{name}.h5ad").counts
        for seed in seeds:
            split = make_split(counts, seed=seed)
            for protocol in protocols:
                Y = protocol_matrix(counts, split, protocol)
                for method in methods:
                    filled, seconds = impute_with_baseline(method, Y, split.observed, seed=seed)
                    rows.append({"dataset": name, "protocol": protocol, "method": method, "seed": seed, **evaluate(Y, filled, split.test),
                                 "seconds": round(seconds, 2)})
    return rows


def run_wide(methods: list[str], seed: int = 0, n_taxa: int = 1700, timeout: float = 1800.0) -> list[dict]:
    """Each method in its own process, so one that passes `timeout` is reported rather than waited on."""
    import subprocess
    import sys

    rows = []
    for method in methods:
        code = ("import json, sys; sys.path.insert(0, %r); from baselines import wide_row; print(json.dumps(wide_row(%r, %d, %d)))"
                % (str(Path(__file__).parent), method, seed, n_taxa))
        try:
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                                 env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else
                        {"method": method, "error": res.stderr.strip().splitlines()[-1:]})
        except subprocess.TimeoutExpired:
            rows.append({"method": method, "n_taxa": n_taxa, "timed_out_after_s": timeout})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def wide_row(method: str, seed: int, n_taxa: int) -> dict:
    from depmicro.core.data.synthetic import kraken_like

    Y = kraken_like(n_samples=1000, n_taxa=n_taxa, seed=seed, metadata=False)[0].normalized
    split = make_split(Y, seed=seed)
    filled, seconds = impute_with_baseline(method, Y, split.observed, seed=seed)
    e = evaluate(Y, filled, split.test)
    return {"dataset": f"kraken_like_1000x{n_taxa}", "method": method, "seed": seed, "pcc_per_microbe": round(e["pcc_per_microbe"], 4),
            "pcc": round(e["pcc"], 4), "rmse": round(e["rmse"], 4), "seconds": round(seconds, 1)}


def markdown(rows: list[dict]) -> str:
    keys = ("pcc_per_microbe", "pcc", "cos", "rmse", "mae")
    out = ["| dataset | protocol | method | " + " | ".join(keys) + " | microbes | held out | seconds |",
           "|---" * (len(keys) + 6) + "|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r.get("protocol", "paper"), r["method"]), []).append(r)
    for (ds, protocol, method), rs in groups.items():
        cells = []
        for k in keys:
            v = np.array([r[k] for r in rs])
            m = float(v.mean()) if abs(v.mean()) >= 5e-4 else 0.0  # no "-0.000"
            cells.append(f"{m:.3f}" + (f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else ""))
        out.append(f"| {ds} | {protocol} | {method} | " + " | ".join(cells) + f" | {rs[0]['n_microbes']} | {rs[0]['n_heldout']} | {np.mean([r['seconds'] for r in rs]):.1f} |")
    return "\n".join(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="+", default=["stad", "coad", "hnsc"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--protocol", nargs="+", choices=PROTOCOLS, default=["paper"], help="one or both protocols (same masks)")
    ap.add_argument("--methods", nargs="+", choices=BASELINES, default=list(BASELINES))
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--wide", action="store_true", help="the kraken_like 1,000 x 1,700 row instead of TCMA")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per method (--wide)")
    a = ap.parse_args()
    if a.wide:
        print(json.dumps(run_wide(a.methods, a.seeds[0], timeout=a.timeout), indent=1))
        raise SystemExit(0)
    rows = run(a.sets, a.seeds, a.protocol, a.methods)
    print(markdown(rows) if a.markdown else json.dumps(rows, indent=1))
