"""The foundation's reference table: mean / knn / iterative on the three TCMA sets under the
protocol (test mask, seed 0 by default). Prints JSON, and a Markdown table with --markdown.

    python tests/bench/baselines.py [--seeds 0 1 2] [--protocol paper renormalized] [--markdown]
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
    a = ap.parse_args()
    rows = run(a.sets, a.seeds, a.protocol, a.methods)
    print(markdown(rows) if a.markdown else json.dumps(rows, indent=1))
