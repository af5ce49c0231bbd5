"""`depmicro study run|resume|status`. Heavy imports (Ray, MLflow, torch) happen inside handlers."""
from __future__ import annotations

import argparse


def _common(p: argparse.ArgumentParser, address: bool = True) -> None:
    if address:
        p.add_argument("--address", help="an existing Ray cluster (host:port); default: a private Ray on this machine")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db in the working directory)")
    p.add_argument("--storage", help="Ray Tune storage directory (default: ./depmicro_results)")


def _precheck(args: argparse.Namespace, file: str | None = None) -> None:
    """What can be refused without Ray: the study file or name and the tracking URI, before the
    runner (which imports Ray and MLflow) is loaded, so a mistake costs a fraction of a second."""
    from depmicro.studies.spec import check_name, load_spec
    from depmicro.studies.schema import check_tracking_uri

    if file is not None:
        load_spec(file)
    else:
        check_name(args.name)
    if args.tracking_uri:
        check_tracking_uri(args.tracking_uri)
def _duration(text: str) -> float:
    from depmicro.core.errors import DepmicroError
    from depmicro.studies.spec import _duration as parse

    if text.strip() in ("0", "none"):
        return 0.0
    try:
        return parse(float(text) if text.replace(".", "", 1).isdigit() else text, "--time-budget")
    except DepmicroError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run(args: argparse.Namespace) -> dict:
    _precheck(args, args.file)
    from depmicro.studies.runner import run_study

    return run_study(args.file, address=args.address, tracking_uri=args.tracking_uri, storage=args.storage)


def _resume(args: argparse.Namespace) -> dict:
    _precheck(args)
    from depmicro.studies.runner import resume_study

    return resume_study(args.name, address=args.address, tracking_uri=args.tracking_uri, storage=args.storage,
                        allow_changed_data=args.allow_changed_data, time_budget=args.time_budget)


def _status(args: argparse.Namespace) -> dict | None:
    _precheck(args)
    from depmicro.studies.runner import study_status

    st = study_status(args.name, tracking_uri=args.tracking_uri, storage=args.storage)
    if args.json:
        return st
    print(format_status(st))
    return None


def format_status(st: dict) -> str:
    """A table a person reads: one trial per line, the study's metric and test result."""
    counts = ", ".join(f"{v} {k}" for k, v in sorted(st["counts"].items())) or "no trials yet"
    expected = f" of {st['expected_trials']}" if "expected_trials" in st else ""
    stopped = f" (stopped on its {st['stopped_on'].replace('_', ' ')}; `study resume` continues it)" if st.get("stopped_on") else ""
    lines = [f"study {st['name']}: {st['state']}{stopped}; {len(st['trials'])}{expected} trial(s): {counts}",
             f"  mlflow {st['tracking_uri']}  storage {st['storage']}"]
    if st.get("error"):
        lines.insert(1, f"  driver failed: {st['error']}")
    head = f"  {'trial_id':<14} {'status':<10} {'dataset':<10} {'seed':>4} {'variant':<22} {'epochs':>7} {'best_val_pcc_pm':>15} {'test_pcc_pm':>11}"
    lines.append(head)
    for t in st["trials"]:
        m = t["metrics"]
        epochs = f"{t.get('epochs_done') or '-'}/{t['config'].get('epochs', '?')}"
        lines.append(f"  {str(t['trial_id']):<14} {t['status']:<10} {str(t['dataset']):<10} {str(t['seed']):>4} "
                     f"{str(t['variant'])[:22]:<22} {epochs:>7} {_f(m.get('best_val_pcc_per_microbe', m.get('val_pcc_per_microbe'))):>15} "
                     f"{_f(m.get('test_pcc_per_microbe')):>11}")
        if t.get("inference_best"):
            b = t["inference_best"]
            lines.append(f"  {'':<14} best inference setting {b['label']}: {b['metric']}={_f(b['value'])}"
                         + (f", {_f(b['seconds'])} s to impute" if "seconds" in b else ""))
    for b in st.get("baselines", []):
        lines.append(f"  baseline {b['method']:<9} {str(b['dataset']):<10} seed {b['seed']}: "
                     f"test_pcc_per_microbe={_f(b['metrics'].get('test_pcc_per_microbe'))}")
    return "\n".join(lines)


def _f(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def register(sub: argparse._SubParsersAction) -> None:
    from depmicro.core.cli import add_command

    study = sub.add_parser("study", help="hyperparameter studies on Ray Tune, tracked in MLflow",
                           description="hyperparameter studies on Ray Tune, tracked in MLflow")
    ssub = study.add_subparsers(dest="study_command", metavar="ACTION", required=True)
    p = add_command(ssub, "run", _run, "run a study file (YAML) to completion")
    p.add_argument("file", help="study file, e.g. studies/quickstart.yaml")
    _common(p)
    p.set_defaults(command="study run")
    p = add_command(ssub, "resume", _resume, "continue a study whose driver stopped; finished trials are kept")
    p.add_argument("name", help="the study's name (its `name:` key)")
    p.add_argument("--time-budget", type=_duration, default=None, metavar="DURATION",
                   help="this session's time budget instead of the study's (90s, 30m, 2h; 0: none)")
    p.add_argument("--allow-changed-data", action="store_true",
                   help="resume although a data file changed since the study started (recorded in MLflow and the state)")
    _common(p)
    p.set_defaults(command="study resume")
    p = add_command(ssub, "status", _status, "every trial of a study with its status, config and metrics")
    p.add_argument("name", help="the study's name (its `name:` key)")
    _common(p, address=False)
    p.set_defaults(command="study status")
