"""The `depmicro study` commands: their table, arguments and the checks that refuse a bad study file, name,
tracking URI or study state, or a study another driver runs, before the handlers' modules load (studies/commands.py:
Ray, MLflow, torch; studies/status.py: MLflow), so a mistake costs about a second."""
from __future__ import annotations

import argparse
from pathlib import Path

from depmicro.core.cli.common import Command
from depmicro.core.errors import DepmicroError
from depmicro.studies.fields import check_name, duration
from depmicro.studies.schema import check_tracking_uri
from depmicro.studies.spec import load_spec
from depmicro.studies.state import STATE_FILE, check_resumable, experiment_dir, read_state, refuse_if_running, storage_root


def _common(p: argparse.ArgumentParser, address: bool = True) -> None:
    if address:
        p.add_argument("--address", help="an existing Ray cluster (host:port); default: a private Ray on this machine")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db in the working directory)")
    p.add_argument("--storage", help="Ray Tune storage directory (default: ./depmicro_results)")


def _time_budget(text: str) -> float:
    if text.strip() in ("0", "none"):
        return 0.0
    try:
        return duration(float(text) if text.replace(".", "", 1).isdigit() else text, "--time-budget")
    except DepmicroError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="study file, e.g. studies/quickstart.yaml")
    _common(p)


def resume_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the study's name (its `name:` key)")
    p.add_argument("--time-budget", type=_time_budget, default=None, metavar="DURATION",
                   help="this session's time budget instead of the study's (90s, 30m, 2h; 0: none)")
    p.add_argument("--allow-changed-data", action="store_true",
                   help="resume although a data file changed since the study started (recorded in MLflow and the state)")
    _common(p)


def status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the study's name (its `name:` key)")
    _common(p, address=False)


def check_file(args: argparse.Namespace) -> None:
    """The study file, the tracking URI and whether a driver already runs the study, checked without Ray."""
    spec = load_spec(args.file)
    if args.tracking_uri:
        check_tracking_uri(args.tracking_uri)
    refuse_if_running(storage_root(args.storage), spec.name)


def _check_name_and_uri(args: argparse.Namespace) -> Path:
    check_name(args.name)
    if args.tracking_uri:
        check_tracking_uri(args.tracking_uri)
    return experiment_dir(args.name, args.storage)


def check_resume(args: argparse.Namespace) -> None:
    """The study name, the tracking URI, the study's state file, whether a driver already runs it and whether its
    data changed, checked without Ray (the runner checks all of it again under the lock)."""
    exp = _check_name_and_uri(args)
    state = read_state(exp)
    refuse_if_running(exp.parent, args.name)
    check_resumable(args.name, state, args.tracking_uri, args.allow_changed_data)


def check_status(args: argparse.Namespace) -> None:
    """As check_resume, but a study without a state file (its driver failed early) is read from MLflow alone."""
    exp = _check_name_and_uri(args)
    if (exp / STATE_FILE).exists():
        read_state(exp)


COMMANDS = (
    Command("study", "hyperparameter studies on Ray Tune, tracked in MLflow"),
    Command("study run", "run a study file (YAML) to completion", "depmicro.studies.commands:run", run_arguments, check_file),
    Command("study resume", "continue a study whose driver stopped; finished trials are kept",
            "depmicro.studies.commands:resume", resume_arguments, check_resume),
    Command("study status", "every trial of a study with its status, config and metrics",
            "depmicro.studies.status:status_command", status_arguments, check_status),
)
