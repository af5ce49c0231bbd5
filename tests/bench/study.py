"""Benchmark: the quickstart study with 1 and 2 concurrent trials, with and without ASHA.

Each variant runs `depmicro study run` in a fresh directory (own Ray, own MLflow db) and is timed
end to end, driver start-up included (what a user waits for). Trial-epochs (epochs actually
trained, summed over trials) come from MLflow, so ASHA's saving shows next to its wall time.

    python tests/bench/study.py                       # the quickstart as shipped (about 10 min on 2 CPUs)
    python tests/bench/study.py --epochs 4 --num-samples 4

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "studies" / "quickstart.yaml"
VARIANTS = {"c1_asha": (1, True), "c2_asha": (2, True), "c1_fifo": (1, False), "c2_fifo": (2, False)}


def _spec(directory: Path, concurrent: int, asha: bool, epochs: int | None, num_samples: int | None) -> Path:
    spec = yaml.safe_load(QUICKSTART.read_text())
    spec["base_config"]["file"] = str(QUICKSTART.parent / spec["base_config"]["file"])
    spec["max_concurrent_trials"] = concurrent
    spec["baselines"] = []  # the same for every variant; not what is measured
    if epochs:
        spec["base_config"]["epochs"] = epochs
        if isinstance(spec.get("scheduler"), dict):
            spec["scheduler"]["grace_period"] = min(spec["scheduler"].get("grace_period", 1), max(1, epochs // 3))
    if num_samples:
        spec["num_samples"] = num_samples
    if not asha:
        spec["scheduler"] = "none"
    path = directory / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _trial_epochs(uri: str, name: str) -> tuple[int, dict]:
    from mlflow.tracking import MlflowClient

    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[f"depmicro-{name}"], filter_string="tags.`depmicro.kind` = 'trial'")
    client = MlflowClient(uri)
    total = sum(max((m.step for m in client.get_metric_history(r, "train_loss")), default=0) for r in runs["run_id"])
    return int(total), runs["tags.depmicro.status"].value_counts().to_dict()


def run_variant(label: str, concurrent: int, asha: bool, epochs: int | None, num_samples: int | None) -> dict:
    d = Path(tempfile.mkdtemp(prefix=f"bench-study-{label}-"))
    spec = _spec(d, concurrent, asha, epochs, num_samples)
    uri = f"sqlite:///{d / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "depmicro.core.cli", "study", "run", str(spec), "--tracking-uri", uri,
           "--storage", str(d / "results"), "--json"]
    t0 = time.perf_counter()
    with open(d / "driver.err", "w") as err:
        proc = subprocess.Popen(cmd, cwd=d, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=3600)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever Ray left in the driver's session
            except ProcessLookupError:
                pass
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "log": str(d / "driver.err")}
    summary = json.loads(out)
    trial_epochs, statuses = _trial_epochs(uri, summary["name"])
    best = summary.get("best", {})
    return {
        "max_concurrent_trials": concurrent, "scheduler": "asha" if asha else "none", "wall_s": round(wall, 1),
        "trials": summary["trials"], "statuses": statuses, "trial_epochs": trial_epochs,
        "best_val_pcc_per_microbe": best.get("best_val_pcc_per_microbe"), "best_test_pcc_per_microbe": best.get("test_pcc_per_microbe"),
        "dir": str(d),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, help="override the quickstart's epochs")
    ap.add_argument("--num-samples", type=int, help="override the quickstart's number of trials")
    ap.add_argument("--only", choices=list(VARIANTS), nargs="*", help="run only these variants")
    args = ap.parse_args()
    t0 = time.time()
    out = {"study": str(QUICKSTART), "epochs": args.epochs, "num_samples": args.num_samples, "cpus": os.cpu_count(),
           "variants": {}}
    for label, (conc, asha) in VARIANTS.items():
        if args.only and label not in args.only:
            continue
        out["variants"][label] = run_variant(label, conc, asha, args.epochs, args.num_samples)
        print(f"{label}: {out['variants'][label]}", file=sys.stderr, flush=True)
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
