"""The `depmicro analyze` and `depmicro export` commands: their table, arguments and the checks that refuse
a bad --out or tracking URI first. The handlers (analysis/commands/, one module per command) load MLflow,
matplotlib, optuna and torch only when one runs, which is seconds a refused command line does not pay."""
from __future__ import annotations

import argparse

from depmicro.core.cli.common import Command
from depmicro.core.io.outputs import MODEL_KIND, REPORT_KIND, check_output
from depmicro.studies.schema import check_tracking_uri


def analyze_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study name (its MLflow experiment is depmicro-STUDY)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///mlflow.db)")
    p.add_argument("--out", required=True, help="output directory for tables, figures and report.html")
    p.add_argument("--reference", default=None, help="arm the paired tests compare against (default: the arm "
                   "repeating the base config, else the best one)")
    p.add_argument("--no-log", action="store_true", help="do not attach report.html to the study's parent run")


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study name (its MLflow experiment is depmicro-STUDY)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///mlflow.db)")
    p.add_argument("--metric", default="best_val_pcc_per_microbe", help="run metric to select by (a validation metric)")
    p.add_argument("--mode", default="max", choices=["max", "min"], help="whether larger or smaller is better")
    p.add_argument("--dataset", default=None, help="pick among the trials of this data set only")
    p.add_argument("--out", required=True, help="bundle directory to write (replaced atomically if it is a bundle)")
    p.add_argument("--register", metavar="NAME", default=None, help="also register the bundle as pyfunc model NAME")


def _checks(kind: str):
    def check(args: argparse.Namespace) -> None:
        """What the handler checks first (analysis/report.py, analysis/export.py), without MLflow."""
        check_output(args.out, directory=kind)
        if args.tracking_uri:
            check_tracking_uri(args.tracking_uri)
    return check


COMMANDS = (
    Command("analyze", "tables, paired tests, importance and figures of a study, as report.html",
            "depmicro.analysis.commands.analyze:analyze", analyze_arguments, _checks(REPORT_KIND)),
    Command("export", "write the best trial of a study as a verified model bundle", "depmicro.analysis.commands.export:export",
            export_arguments, _checks(MODEL_KIND)),
)
