"""The handler of `depmicro export` (torch and MLflow load here, not for --help or `analyze`)."""
from __future__ import annotations

import argparse

from depmicro.analysis.export import export as export_study


def export(args: argparse.Namespace) -> dict:
    return export_study(args.study, args.out, tracking_uri=args.tracking_uri, metric=args.metric, mode=args.mode,
                        register=args.register, dataset=args.dataset)
