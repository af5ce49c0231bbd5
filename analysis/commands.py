"""`depmicro analyze` and `depmicro export`: review a study and ship its winner, from MLflow alone.
Heavy imports (mlflow, matplotlib, optuna) happen inside the handlers so `depmicro --help` stays fast."""
from __future__ import annotations

import argparse

from depmicro.core.cli import add_command


def _cmd_analyze(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from depmicro.analysis.report import analyze

    result = analyze(args.study, args.out, tracking_uri=args.tracking_uri, log_to_parent=not args.no_log,
                     reference=args.reference)
    if not args.json and result["claims"]:  # the table itself, readable; --json keeps the rows
        print((Path(args.out) / "claims.md").read_text())
        result["claims"] = f"{len(result['claims'])} claims (table above; claims.csv, claims.md)"
    return result


def _cmd_export(args: argparse.Namespace) -> dict:
    from depmicro.analysis.export import export

    return export(args.study, args.out, tracking_uri=args.tracking_uri, metric=args.metric, mode=args.mode,
                  register=args.register, dataset=args.dataset)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "analyze", _cmd_analyze, "tables, paired tests, importance and figures of a study, as report.html")
    p.add_argument("study", help="study name (its MLflow experiment is depmicro-STUDY)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///mlflow.db)")
    p.add_argument("--out", required=True, help="output directory for tables, figures and report.html")
    p.add_argument("--reference", default=None, help="arm the paired tests compare against (default: the arm "
                   "repeating the base config, else the best one)")
    p.add_argument("--no-log", action="store_true", help="do not attach report.html to the study's parent run")

    p = add_command(sub, "export", _cmd_export, "write the best trial of a study as a verified model bundle")
    p.add_argument("study", help="study name (its MLflow experiment is depmicro-STUDY)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///mlflow.db)")
    p.add_argument("--metric", default="best_val_pcc_per_microbe", help="run metric to select by (a validation metric)")
    p.add_argument("--mode", default="max", choices=["max", "min"], help="whether larger or smaller is better")
    p.add_argument("--dataset", default=None, help="pick among the trials of this data set only")
    p.add_argument("--out", required=True, help="bundle directory to write (replaced atomically if it is a bundle)")
    p.add_argument("--register", metavar="NAME", default=None, help="also register the bundle as pyfunc model NAME")
