"""The handlers of `depmicro study run|resume` (the table and arguments: studies/cli.py; `status`'s
handler lives in studies/status.py, which needs MLflow but neither Ray nor torch). Loaded only when
one of them runs: the runner imports Ray, MLflow and torch."""
from __future__ import annotations

import argparse

from depmicro.studies.runner import resume_study, run_study


def run(args: argparse.Namespace) -> dict:
    return run_study(args.file, address=args.address, tracking_uri=args.tracking_uri, storage=args.storage)


def resume(args: argparse.Namespace) -> dict:
    return resume_study(args.name, address=args.address, tracking_uri=args.tracking_uri, storage=args.storage,
                        allow_changed_data=args.allow_changed_data, time_budget=args.time_budget)
