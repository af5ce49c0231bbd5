"""Benchmark: the quickstart study with 1 and 2 concurrent trials, and ASHA against no early stopping.

Every variant draws the same configurations (search: random with the quickstart's seed, so Tune's
variant generator suggests the same ones) on the same held-out seed, in a fresh directory (own
Ray, own MLflow db), timed end to end, driver start-up included (what a user waits for).

- concurrency: c1_fifo vs c2_fifo, the same trials one or two at a time (each trial gets the torch
  threads of its `cpu` resource, so two trials do not fight over the cores). `wall_s` is what the
  user waits for; `trial_phase_s` (first trial start to last trial end) is the part concurrency can
  shorten: the driver's fixed work before and after (imports, Ray, the shared VAE) runs once either way.
- early stopping: c2_asha vs c2_fifo, on the same configurations (same search seed). From MLflow's
  per-epoch validation history (ordered by time) it counts the trial-epochs each needed before its
  best-so-far validation score came within `--tolerance` of the no-stopping run's best
  (`epochs_to_target`), and the trial-epochs each spent in all. One draw decides little (where the
  best configuration falls in the order is luck), so `--search-seeds` repeats the pair on several
  draws and `summary` sums over them. `rank_agreement_by_epoch` (per draw, from the no-stopping run):
  the Spearman correlation between each epoch's score and the trial's best, i.e. how well a rung at that
  epoch would order the trials; a grace period below where it is high stops trials on noise.
  `halving_replay` (per draw, from the same curves): synchronous successive halving replayed for a grid of grace
  periods and reduction factors, the fraction of trial-epochs each spends and whether it reaches the target.
- `--base`, `--space`, `--grace-period`, `--reduction-factor` change the workload and the scheduler, so a
  grace period can be calibrated on one draw and scored on others.

    python tests/bench/study.py                       # the quickstart as shipped
    python tests/bench/study.py --epochs 24 --num-samples 12 --search-seeds 0 1 2
    python tests/bench/study.py --epochs 24 --num-samples 12 --search-seeds 3 --only c2_fifo --base batch_size=16

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
VARIANTS = {"c2_fifo": (2, False), "c1_fifo": (1, False), "c2_asha": (2, True)}
REPLAY_GRID = [(g, rf) for g in (1, 2, 3, 4, 6) for rf in (2, 3, 4)]


def _spec(directory: Path, concurrent: int, asha: bool, epochs: int | None, num_samples: int | None,
          search_seed: int | None = None, overrides: dict | None = None) -> Path:
    spec = yaml.safe_load(QUICKSTART.read_text())
    spec["base_config"]["file"] = str(QUICKSTART.parent / spec["base_config"]["file"])
    spec["max_concurrent_trials"] = concurrent
    spec["baselines"] = []  # the same for every variant; not what is measured
    seed = spec.get("search", {}).get("seed", 0) if search_seed is None else search_seed
    spec["search"] = {"algorithm": "random", "seed": seed}  # same configs in every variant of one draw
    if epochs:
        spec["base_config"]["epochs"] = epochs
        if isinstance(spec.get("scheduler"), dict):
            spec["scheduler"]["grace_period"] = min(spec["scheduler"].get("grace_period", 1), max(1, epochs // 3))
    if num_samples:
        spec["num_samples"] = num_samples
    o = overrides or {}
    _assign(spec["base_config"], o.get("base"))
    _assign(spec["search_space"], o.get("space"))
    for key in ("grace_period", "reduction_factor"):
        if o.get(key) and isinstance(spec.get("scheduler"), dict):
            spec["scheduler"][key] = o[key]
    if not asha:
        spec["scheduler"] = "none"
    path = directory / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _assign(table: dict, items: list[str] | None) -> None:
    """KEY=VALUE items (VALUE read as YAML) into a section of the study file."""
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"study.py: expected KEY=VALUE, got {item!r}")
        table[key] = yaml.safe_load(value)


def _trial_runs(uri: str, name: str):
    """The study's trial runs in MLflow (one DataFrame row each)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[f"depmicro-{name}"], filter_string="tags.`depmicro.kind` = 'trial'")


def _val_events(uri: str, name: str, metric: str = "val_pcc_per_microbe") -> list[tuple[int, str, int, float]]:
    """(timestamp ms, run id, epoch, value) of every validated epoch of every trial, in time order."""
    from mlflow.tracking import MlflowClient

    runs = _trial_runs(uri, name)
    client = MlflowClient(uri)
    ev = [(m.timestamp, r, m.step, m.value) for r in runs["run_id"] for m in client.get_metric_history(r, metric)]
    return sorted(ev)


def epochs_to_target(events: list[tuple[int, str, int, float]], target: float) -> int | None:
    """Trial-epochs trained (in time order) until the best validation score so far reached `target`."""
    best = float("-inf")
    for i, (_, _, _, v) in enumerate(events, start=1):
        best = max(best, v)
        if best >= target:
            return i
    return None


def _trial_phase_s(uri: str, name: str) -> float:
    """First trial start to last trial end (MLflow's run times): the part concurrency can shorten,
    without the driver's fixed work (imports, Ray start-up, dependency statistics, the shared VAE)."""
    runs = _trial_runs(uri, name)
    return round((runs["end_time"].max() - runs["start_time"].min()).total_seconds(), 1)


def _trial_epochs(uri: str, name: str) -> tuple[int, dict]:
    from mlflow.tracking import MlflowClient

    runs = _trial_runs(uri, name)
    client = MlflowClient(uri)
    total = sum(max((m.step for m in client.get_metric_history(r, "train_loss")), default=0) for r in runs["run_id"])
    return int(total), runs["tags.depmicro.status"].value_counts().to_dict()


def run_variant(label: str, concurrent: int, asha: bool, epochs: int | None, num_samples: int | None,
                search_seed: int | None = None, overrides: dict | None = None) -> dict:
    d = Path(tempfile.mkdtemp(prefix=f"bench-study-{label}-"))
    spec = _spec(d, concurrent, asha, epochs, num_samples, search_seed, overrides)
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
        "max_concurrent_trials": concurrent, "scheduler": "asha" if asha else "none", "search_seed": search_seed,
        "wall_s": round(wall, 1),
        "trial_phase_s": _trial_phase_s(uri, summary["name"]),
        "trials": summary["trials"], "statuses": statuses, "trial_epochs": trial_epochs,
        "best_val_pcc_per_microbe": best.get("best_val_pcc_per_microbe"), "best_test_pcc_per_microbe": best.get("test_pcc_per_microbe"),
        "val_events": [(r, e, v) for _, r, e, v in _val_events(uri, summary["name"])], "dir": str(d),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, help="override the quickstart's epochs")
    ap.add_argument("--num-samples", type=int, help="override the quickstart's number of trials")
    ap.add_argument("--only", choices=list(VARIANTS), nargs="*", help="run only these variants")
    ap.add_argument("--search-seeds", type=int, nargs="+",
                    help="draws of configurations for the ASHA pair (default: the quickstart's search seed); "
                         "the concurrency pair runs on the first")
    ap.add_argument("--base", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override base_config fields (e.g. batch_size=16: a quickstart epoch is 4 optimizer steps at 64)")
    ap.add_argument("--space", nargs="*", default=[], metavar="KEY=YAML",
                    help="override search_space entries, e.g. 'lr={type: loguniform, low: 1.0e-5, high: 3.0e-2}'")
    ap.add_argument("--grace-period", type=int, help="override the study's ASHA grace period (epochs)")
    ap.add_argument("--reduction-factor", type=int, help="override the study's ASHA reduction factor")
    ap.add_argument("--tolerance", type=float, default=0.005, help="how close to the no-stopping best counts as reached")
    args = ap.parse_args()
    t0 = time.time()
    seeds = args.search_seeds or [None]
    overrides = {"base": args.base, "space": args.space, "grace_period": args.grace_period,
                 "reduction_factor": args.reduction_factor}
    out = {"study": str(QUICKSTART), "epochs": args.epochs, "num_samples": args.num_samples, "cpus": os.cpu_count(),
           "search_seeds": args.search_seeds, "overrides": {k: v for k, v in overrides.items() if v}, "variants": {}}
    for i, seed in enumerate(seeds):
        for label, (conc, asha) in VARIANTS.items():
            if (args.only and label not in args.only) or (label == "c1_fifo" and i > 0):
                continue
            key = label if i == 0 else f"{label}@{seed}"
            out["variants"][key] = run_variant(label, conc, asha, args.epochs, args.num_samples, seed, overrides)
            print(f"{key}: {out['variants'][key]}", file=sys.stderr, flush=True)
    out["summary"] = summarize(out["variants"], args.tolerance, seeds)
    for v in out["variants"].values():
        v.pop("val_events", None)
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=2))


def rank_agreement(events: list[tuple[str, int, float]]) -> dict[int, float]:
    """Spearman correlation, over the trials of a no-stopping run, between each epoch's validation score and the
    trial's best: how well a rung at that epoch orders the trials (ASHA's grace period must sit where this is high)."""
    import pandas as pd

    df = pd.DataFrame(events, columns=["run", "epoch", "val"])
    best = df.groupby("run")["val"].max()
    wide = df.pivot_table(index="run", columns="epoch", values="val")
    return {int(e): round(float(wide[e].corr(best, method="spearman")), 3) for e in wide.columns
            if wide[e].notna().sum() == len(best)}


def halving_replay(events: list[tuple[str, int, float]], grace: int, rf: int, tolerance: float) -> dict:
    """Synchronous successive halving replayed on a no-stopping run's curves: at each rung (grace, grace*rf, ...)
    the best 1/rf of the trials by that epoch's score go on. A cheap stand-in for ASHA (which promotes
    asynchronously, so it spends somewhat more), to ask of the curves already measured whether any grace period
    and reduction factor could reach the target, before paying for ASHA runs."""
    curves: dict[str, dict[int, float]] = {}
    for r, e, v in events:
        curves.setdefault(r, {})[e] = v
    max_t = max(max(c) for c in curves.values())
    alive, lo, hi, spent, seen = list(curves), 0, grace, 0, []
    while True:
        top = min(hi, max_t)
        seen += [v for r in alive for e, v in curves[r].items() if lo < e <= top]
        spent += len(alive) * (top - lo)
        if top >= max_t:
            break
        alive = sorted(alive, key=lambda r: -curves[r].get(top, float("-inf")))[:max(1, len(alive) // rf)]
        lo, hi = top, top * rf
    best = max(v for *_, v in events)
    return {"spent": round(spent / sum(len(c) for c in curves.values()), 3),
            "reached": max(seen) >= best - tolerance, "short_by": round(best - max(seen), 4)}


def _early_stopping(fifo: dict, asha: dict, tolerance: float) -> dict:
    """One draw: epochs to within `tolerance` of the no-stopping best, and the trial-epochs spent."""
    ref = [(0, r, e, v) for r, e, v in fifo["val_events"]]
    target = max(v for *_, v in ref) - tolerance
    return {"target_val_pcc_per_microbe": round(target, 4),
            "fifo_best": round(target + tolerance, 4), "asha_best": asha.get("best_val_pcc_per_microbe"),
            "fifo_epochs_to_target": epochs_to_target(ref, target),
            "asha_epochs_to_target": epochs_to_target([(0, r, e, v) for r, e, v in asha["val_events"]], target),
            "fifo_trial_epochs": fifo["trial_epochs"], "asha_trial_epochs": asha["trial_epochs"]}


def summarize(variants: dict, tolerance: float, seeds: list | None = None) -> dict:
    """The two ratios the issue sets targets for (2 concurrent <= 0.6x of 1; ASHA <= 40 % of the trial-epochs),
    the ASHA ones summed over every draw (a draw where ASHA never reached the target counts all it spent)."""
    out: dict = {"tolerance": tolerance}
    c1, c2 = variants.get("c1_fifo", {}), variants.get("c2_fifo", {})
    if "wall_s" in c1 and "wall_s" in c2:
        out["wall_c2_over_c1"] = round(c2["wall_s"] / c1["wall_s"], 3)
        out["trial_phase_c2_over_c1"] = round(c2["trial_phase_s"] / c1["trial_phase_s"], 3)
    draws = []
    for i, seed in enumerate(seeds or [None]):
        sfx = "" if i == 0 else f"@{seed}"
        fifo, asha = variants.get(f"c2_fifo{sfx}", {}), variants.get(f"c2_asha{sfx}", {})
        if "val_events" in fifo and "val_events" in asha:
            draws.append({"search_seed": seed, **_early_stopping(fifo, asha, tolerance)})
        if "val_events" in fifo:
            out.setdefault("rank_agreement_by_epoch", {})[str(seed)] = rank_agreement(fifo["val_events"])
            for g, rf in REPLAY_GRID:
                out.setdefault("halving_replay", {}).setdefault(f"grace {g} rf {rf}", {})[str(seed)] = \
                    halving_replay(fifo["val_events"], g, rf, tolerance)
    if draws:
        reached = [d for d in draws if d["asha_epochs_to_target"] is not None]
        f_n = sum(d["fifo_epochs_to_target"] for d in draws)
        a_n = sum(d["asha_epochs_to_target"] if d["asha_epochs_to_target"] is not None else d["asha_trial_epochs"]
                  for d in draws)
        f_all, a_all = sum(d["fifo_trial_epochs"] for d in draws), sum(d["asha_trial_epochs"] for d in draws)
        out.update({"draws": draws, "asha_reached_target": f"{len(reached)} of {len(draws)}",
                    "asha_over_fifo_epochs_to_target": round(a_n / f_n, 3) if f_n else None,
                    "asha_over_fifo_total_epochs": round(a_all / f_all, 3) if f_all else None})
    return out


if __name__ == "__main__":
    main()
