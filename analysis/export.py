"""`depmicro export`: ship the best trial of a study as a self-contained, verifiable bundle.

The bundle is the trial's `model/` artifact (what core/model/bundle.py's save_model wrote: safetensors
weights, config, dependency mask, normalization, taxa, metadata-encoder reference) plus
metrics.json and provenance.json, all covered by one SHA-256 manifest. It is built in a temporary
sibling directory and renamed into place, so a failed export never leaves half a bundle.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from depmicro.analysis.confirm import load_confirm, winner_trials
from depmicro.analysis.inference import val_metric
from depmicro.analysis.runs import StudyRuns, load_study
from depmicro.core.data import load_dataset
from depmicro.core.data.evaluation import COUNTS, METRICS, direction, evaluate, make_split, protocol_matrix, training_view
from depmicro.core.errors import DepmicroError
from depmicro.core.io.manifest import MANIFEST
from depmicro.core.io.outputs import MODEL_KIND, check_output
from depmicro.core.model.bundle import load_model, manifested_dir
from depmicro.studies.inference import PREFIX, best_setting, trial_settings
from depmicro.studies.schema import ARTIFACT_MODEL

DEFAULT_METRIC = "best_val_pcc_per_microbe"
PYFUNC_CODE = Path(__file__).with_name("pyfunc.py")


def pick_best(study: StudyRuns, metric: str = DEFAULT_METRIC, mode: str = "max", dataset: str | None = None) -> pd.Series:
    """The finished trial with the best `metric` (on `dataset` if given); DepmicroError if none.
    Validation scores of different data sets are not comparable, so a multi-set study is best
    exported per set."""
    if mode not in ("max", "min"):
        raise DepmicroError(f"mode must be max or min, not {mode!r}")
    fin = study.finished
    if dataset is not None:
        known = sorted(study.trials["dataset"].dropna().unique()) if len(study.trials) else []
        if dataset not in known:
            raise DepmicroError(f"study {study.name!r} has no dataset {dataset!r} (datasets: {', '.join(known)})")
        fin = fin[fin["dataset"] == dataset]
    if fin.empty:
        raise DepmicroError(f"study {study.name!r} has no finished trials to export" + (f" on {dataset}" if dataset else ""))
    if metric not in fin.columns:
        known = sorted(c for c in fin.columns if c.startswith(("val_", "best_val_", "test_")))
        raise DepmicroError(f"metric {metric!r} was not logged by study {study.name!r} (logged: {', '.join(known)})")
    vals = pd.to_numeric(fin[metric], errors="coerce")
    ok = vals.notna() & vals.map(math.isfinite)
    if not ok.any():
        raise DepmicroError(f"no finished trial of study {study.name!r} has a finite {metric}")
    vals = vals[ok]
    return fin.loc[vals.idxmax() if mode == "max" else vals.idxmin()]


def _val_metrics_at_best(client, run_id: str, val_metric: str) -> dict:
    """Validation metrics at the epoch the saved (best-validation) model comes from."""
    hist = {m: {x.step: x.value for x in client.get_metric_history(run_id, f"val_{m}")} for m in METRICS}
    sel = hist.get(val_metric) or {}
    if not sel:
        return {}
    lower = direction(val_metric) == "min"
    step = (min if lower else max)(sel, key=lambda s: (sel[s], -s) if not lower else (sel[s], s))
    return {"epoch": int(step), **{m: hist[m].get(step) for m in METRICS}}


def _chosen_inference(study: StudyRuns, best: pd.Series) -> dict | None:
    """The trial's best inference setting by validation (None for a study without `inference:`)."""
    metrics = {k: float(v) for k, v in best.items() if isinstance(k, str) and k.startswith(PREFIX) and pd.notna(v)}
    pick = best_setting(metrics, val_metric(study))
    if pick is None:
        return None
    scores = trial_settings(metrics)[pick["label"]]
    return {"label": pick["label"], "setting": pick["setting"], "selected_by": pick["metric"],
            "val": {k[4:]: v for k, v in scores.items() if k.startswith("val_")},
            "test": {k[5:]: v for k, v in scores.items() if k.startswith("test_")}, "seconds": scores.get("seconds")}


def _finite(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def export(study_name: str, out: str | Path, tracking_uri: str | None = None, metric: str = DEFAULT_METRIC,
           mode: str = "max", register: str | None = None, dataset: str | None = None) -> dict:
    """Write the bundle of the best trial to `out`; optionally register it as a pyfunc model."""
    import mlflow
    from mlflow.tracking import MlflowClient

    t0 = time.perf_counter()
    out = check_output(out, directory=MODEL_KIND)  # replaces only a model bundle, and can write there
    study = load_study(study_name, tracking_uri)
    confirmed = load_confirm(study)
    among = winner_trials(study, confirmed)
    if among is not None and len(among):  # a confirmed study ships its winner (best lower bound), not its luckiest trial
        study = dataclasses.replace(study, trials=among)
    best = pick_best(study, metric, mode, dataset)
    client = MlflowClient(study.tracking_uri)
    run_id = str(best["run_id"])
    metrics, chosen = _bundle_metrics(study, best, client, metric, mode)
    provenance = _provenance(study, best, confirmed if among is not None and len(among) else None, dataset)
    with tempfile.TemporaryDirectory(prefix="depmicro-export-") as tmp:
        try:
            src = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT_MODEL, dst_path=tmp))
        except Exception as exc:  # artifact stores raise many kinds; the user needs one line
            raise DepmicroError(f"trial {best['trial_id']} (run {run_id}) has no downloadable model/ artifact "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        load_model(src)  # the tracked copy must be intact (manifest) and loadable before it is shipped

        def fill(d: Path) -> None:
            for p in src.iterdir():
                if p.name == MANIFEST:
                    continue
                (shutil.copytree if p.is_dir() else shutil.copy2)(p, d / p.name)
            if chosen:
                cfg = json.loads((d / "config.json").read_text())
                cfg.update(chosen["setting"])
                (d / "config.json").write_text(json.dumps(cfg, indent=2))
            (d / "metrics.json").write_text(json.dumps(metrics, indent=2))
            (d / "provenance.json").write_text(json.dumps(provenance, indent=2, default=str))

        manifested_dir(out, fill)
    load_model(out)  # what we ship verifies and loads
    result = {"study": study.name, "out": str(out.resolve()), "trial_id": best["trial_id"], "run_id": run_id,
              "dataset": best["dataset"], "seed": provenance["seed"], "metric": metric, "value": float(best[metric]),
              "test": metrics["test"], "inference": chosen}
    if register:
        result["registered"] = register_bundle(out, register, study)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def _bundle_metrics(study: StudyRuns, best: pd.Series, client, metric: str, mode: str) -> tuple[dict, dict | None]:
    """metrics.json of the bundle (selection, validation at the kept epoch, test) and the trial's
    chosen inference setting, whose test scores replace the default setting's."""
    run_id = str(best["run_id"])
    cfg_val_metric = str(best.get("param.val_metric") or "pcc_per_microbe")
    metrics = {
        "selection": {"metric": metric, "mode": mode, "value": float(best[metric])},
        "val": {"best_val_pcc_per_microbe": _finite(best.get("best_val_pcc_per_microbe")),
                **_val_metrics_at_best(client, run_id, cfg_val_metric)},
        "test": {m: _finite(best.get(f"test_{m}")) for m in (*METRICS, *COUNTS)},
    }
    for k in ("n_microbes", "n_heldout"):
        if metrics["test"][k] is not None:
            metrics["test"][k] = int(metrics["test"][k])
    chosen = _chosen_inference(study, best)
    if chosen:  # the bundle imputes with the trial's best inference setting; its test scores are that setting's
        metrics["inference"] = chosen
        metrics["test"].update({m: _finite(chosen["test"].get(m)) for m in METRICS if m in chosen["test"]})
    return metrics, chosen


def _provenance(study: StudyRuns, best: pd.Series, confirmed: dict | None, dataset: str | None) -> dict:
    """provenance.json of the bundle: which study, trial, run, data and commit it came from."""
    run_id = str(best["run_id"])
    return {
        "study": study.name, "trial_id": best["trial_id"], "run_id": run_id, "parent_run_id": best.get("parent_run_id"),
        "experiment_id": study.experiment_id, "dataset": best["dataset"],
        "seed": None if pd.isna(best["seed"]) else int(best["seed"]), "variant": best.get("variant"),
        "label": best.get("label"), "git_commit": best.get("git_commit"), "tracking_uri": study.tracking_uri,
        "model_artifact": f"runs:/{run_id}/{ARTIFACT_MODEL}",
        "confirmed_winner": {"rank": confirmed["winner"], "config": confirmed["winner_config"]} if confirmed else None,
        "n_candidates": int(len(study.finished) if dataset is None else (study.finished["dataset"] == dataset).sum()),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def register_bundle(bundle: str | Path, name: str, study: StudyRuns | None = None, zeros_missing: bool = False) -> dict:
    """Log the bundle as a models-from-code pyfunc model in the study's experiment and register it."""
    import mlflow

    if study is not None:
        mlflow.set_experiment(experiment_id=study.experiment_id)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*type hints.*")  # input is a free-form counts frame
        info = mlflow.pyfunc.log_model(
            name="depmicro-bundle", python_model=str(PYFUNC_CODE), artifacts={"bundle": str(Path(bundle).resolve())},
            registered_model_name=name, model_config={"zeros_missing": zeros_missing},
            pip_requirements=["mlflow", "torch", "safetensors", "numpy", "pandas"],
        )
    return {"name": name, "version": int(info.registered_model_version), "model_uri": f"models:/{name}/{info.registered_model_version}",
            "logged_model_uri": info.model_uri}


def replay(bundle: str | Path, data, metadata: str | Path | None = None) -> dict:
    """Test metrics of a bundle recomputed from scratch: rebuild the trial's held-out masks from its
    seed (provenance.json) and the config's ratios, impute the training view, score split.test.
    Equal to the run's test_* metrics when the bundle is the model the trial reported on.
    `data` is a path (read with load_dataset) or a core.data.Dataset already loaded."""
    bundle = Path(bundle)
    imp = load_model(bundle)
    prov = json.loads((bundle / "provenance.json").read_text())
    ds = data if hasattr(data, "normalized") else load_dataset(data, metadata=metadata)
    cfg = imp.cfg
    split = make_split(ds.counts, seed=int(prov["seed"]), test_ratio=cfg.test_ratio, val_ratio=cfg.val_ratio)
    Y = protocol_matrix(ds.counts, split, cfg.protocol)
    filled = imp.impute(training_view(Y, split), split.observed, ds.metadata_text() if cfg.use_metadata else None)
    return evaluate(Y, filled, split.test)
