"""DepMicroDiff next to mean / knn / iterative on the TCMA sets, same protocol and masks.

    python tests/bench/compare.py [--sets stad coad hnsc] [--seeds 0 1 2] [--config studies/configs/tiny.yaml]
                                  [--set key=value ...] [--no-pretrain] [--projection] [--markdown out.md]
                                  [--protocol paper renormalized]   # both protocols, same masks, every method

Prints one JSON object (rows + markdown table). With the config's vae_pretrain on, the VAE is
pretrained on the other TCMA sets (leave-target-out), as in the paper. --projection adds, for every
method, a `METHOD+mass` row: the same imputation rescaled to each row's missing relative mass
(core/projection.py; a property of this protocol, not of real missing data), so the comparison
with and without it is made on equal terms.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from depmicro.core.data.baselines import BASELINES, impute_with_baseline
from depmicro.core.model.config import load_config
from depmicro.core.data import load_dataset
from depmicro.core.data.evaluation import PROTOCOLS, evaluate, make_split, protocol_matrix, training_view
from depmicro.core.data.projection import project_missing_mass
from depmicro.core.train import fit

REPO = Path(__file__).resolve().parents[2]
TCMA = REPO.parent / "shared" / "data" / "tcma"
ALL = ("stad", "coad", "hnsc")
KEYS = ("pcc_per_microbe", "pcc", "cos", "rmse", "mae")


def run(sets, seeds, config: Path, overrides, pretrain: bool, baselines=BASELINES, projection: bool = False,
        vae_cache: str | None = None, protocols: tuple[str, ...] = ("paper",)) -> list[dict]:
    rows = []
    for name in sets:
        meta = TCMA / f"{name}_metadata.tsv"
        ds = load_dataset(TCMA / f"{name}.h5ad", metadata=meta if meta.exists() else None)
        others = [load_dataset(TCMA / f"{o}.h5ad") for o in ALL if o != name] if pretrain else []
        for seed, protocol in ((s, p) for s in seeds for p in protocols):
            cfg = load_config(config, [*overrides, f"seed={seed}", f"protocol={protocol}"])
            split = make_split(ds.normalized, seed=seed, test_ratio=cfg.test_ratio, val_ratio=cfg.val_ratio)
            Y = protocol_matrix(ds.counts, split, protocol)  # what every method sees and is scored on (fit does the same)
            for method in baselines:
                filled, seconds = impute_with_baseline(method, Y, split.observed, seed=seed)
                rows.append({"dataset": name, "protocol": protocol, "method": method, "seed": seed, **evaluate(Y, filled, split.test),
                             "seconds": round(seconds, 2), "config": "-"})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                if projection:
                    rows.append({**rows[-1], "method": f"{method}+mass", **evaluate(Y, project_missing_mass(Y, split.observed, filled), split.test)})
            res = fit(cfg, ds, split, pretrain=others, vae_cache_dir=vae_cache)
            enc = res.imputer.encoder_impute(training_view(Y, split), split.observed)  # the DAT's floor, same VAE
            rows.append({"dataset": name, "protocol": protocol, "method": "depmicrodiff", "seed": seed, **res.test, "val_pcc_per_microbe": res.val.get("pcc_per_microbe"),
                         "encoder_val_pcc_per_microbe": evaluate(Y, enc, split.val)["pcc_per_microbe"],
                         "encoder_test_pcc_per_microbe": evaluate(Y, enc, split.test)["pcc_per_microbe"],
                         "seconds": round(res.seconds, 2), "epochs": res.epochs, "config": config.stem + ("+" + ",".join(overrides) if overrides else ""),
                         "pretrain": [o.name for o in others], "vae_factor_rank": res.imputer.cfg.vae_factor_rank,
                         "val_history": [round(h["val"]["pcc_per_microbe"], 4) if h["val"] else None for h in res.history],
                         **({"factor_rank_scores": res.factor_rank_scores} if res.factor_rank_scores else {})})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            if projection and not cfg.mass_projection:
                view = training_view(Y, split)
                filled = res.imputer.impute(view, split.observed, ds.metadata_text() if cfg.use_metadata else None)
                rows.append({**rows[-1], "method": "depmicrodiff+mass", **evaluate(Y, project_missing_mass(view, split.observed, filled), split.test)})
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["| dataset | protocol | method | " + " | ".join(KEYS) + " | config | seeds | seconds/run |", "|---" * (len(KEYS) + 6) + "|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r.get("protocol", "paper"), r["method"]), []).append(r)
    for (ds, protocol, method), rs in groups.items():
        cells = []
        for k in KEYS:
            v = np.array([r[k] for r in rs], dtype=float)
            cells.append(f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else ""))
        out.append(f"| {ds} | {protocol} | {method} | " + " | ".join(cells) + f" | {rs[0]['config']} | {len(rs)} | {np.mean([r['seconds'] for r in rs]):.1f} |")
    return "\n".join(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="+", default=list(ALL))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--config", type=Path, default=REPO / "studies" / "configs" / "tiny.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--no-pretrain", action="store_true", help="skip leave-target-out VAE pretraining on the other sets")
    ap.add_argument("--baselines", nargs="*", default=list(BASELINES), help="classical imputers to run next to it (none: skip)")
    ap.add_argument("--markdown", type=Path, help="also write the table here")
    ap.add_argument("--projection", action="store_true", help="also score every method after the missing-mass projection")
    ap.add_argument("--protocol", nargs="+", choices=PROTOCOLS, default=["paper"], help="one or both protocols (same masks)")
    ap.add_argument("--vae-cache", help="VAE cache directory (core/vae_cache.py); a hit gives the same model as training it")
    args = ap.parse_args()
    if not TCMA.exists():
        sys.exit(f"TCMA data absent: {TCMA}")
    import torch

    rows = run(args.sets, args.seeds, args.config, args.set, not args.no_pretrain, tuple(args.baselines), args.projection, args.vae_cache,
               tuple(args.protocol))
    table = markdown(rows)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    print(json.dumps({"device": "cuda" if torch.cuda.is_available() else "cpu", "rows": rows, "markdown": table}, indent=2))
