"""The handler of `depmicro analyze` (MLflow, matplotlib and optuna load here, not for --help)."""
from __future__ import annotations

import argparse
from pathlib import Path

from depmicro.analysis.report import analyze as analyze_study


def analyze(args: argparse.Namespace) -> dict:
    result = analyze_study(args.study, args.out, tracking_uri=args.tracking_uri, log_to_parent=not args.no_log,
                           reference=args.reference)
    if not args.json and result["claims"]:  # the table itself, readable; --json keeps the rows
        print((Path(args.out) / "claims.md").read_text())
        result["claims"] = f"{len(result['claims'])} claims (table above; claims.csv, claims.md)"
    return result
