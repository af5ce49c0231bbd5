"""The handlers of `depmicro analyze` and `depmicro export` (the table and arguments: analysis/cli.py),
loaded only when one of them runs."""
from __future__ import annotations

import argparse
from pathlib import Path

from depmicro.analysis.export import export as export_study
from depmicro.analysis.report import analyze as analyze_study


def analyze(args: argparse.Namespace) -> dict:
    result = analyze_study(args.study, args.out, tracking_uri=args.tracking_uri, log_to_parent=not args.no_log,
                           reference=args.reference)
    if not args.json and result["claims"]:  # the table itself, readable; --json keeps the rows
        print((Path(args.out) / "claims.md").read_text())
        result["claims"] = f"{len(result['claims'])} claims (table above; claims.csv, claims.md)"
    return result


def export(args: argparse.Namespace) -> dict:
    return export_study(args.study, args.out, tracking_uri=args.tracking_uri, metric=args.metric, mode=args.mode,
                        register=args.register, dataset=args.dataset)
