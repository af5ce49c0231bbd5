"""The handlers of `depmicro study run|resume|status` (the table and arguments: studies/cli.py).
Loaded only when one of them runs: the runner imports Ray, MLflow and torch."""
from __future__ import annotations

import argparse

from depmicro.studies.runner import resume_study, run_study, study_status


def run(args: argparse.Namespace) -> dict:
    return run_study(args.file, address=args.address, tracking_uri=args.tracking_uri, storage=args.storage)


def resume(args: argparse.Namespace) -> dict:
    return resume_study(args.name, address=args.address, tracking_uri=args.tracking_uri, storage=args.storage,
                        allow_changed_data=args.allow_changed_data, time_budget=args.time_budget)


def status(args: argparse.Namespace) -> dict | None:
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
