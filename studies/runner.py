"""A study spec becomes one Ray Tune experiment: run, resume, status.

Layout on disk: `<storage>/<study name>/` is the Tune experiment directory (Tune's own state,
trial directories, checkpoints) plus `depmicro_study.json` (the resolved spec with absolute paths,
the tracking URI and the MLflow ids), so `study resume NAME` needs neither the study file nor the
original working directory.

Search mapping (why each):
- optuna: OptunaSearch (seeded TPE) suggests configurations; when the study has several
  (dataset, held-out seed, replicate) combinations, ray.tune.search.Repeater runs each suggestion
  on all of them as separate trials and hands TPE their mean, so TPE optimizes a configuration's
  cross-dataset quality instead of learning which dataset is easiest.
- random / grid: Tune's variant generator, with grid_search over the data combinations and
  ablation arms, so each arm x dataset x seed x replicate is one trial.
- ASHA uses `epoch` as its time attribute, max_t = the study's epochs, and does not stop trials
  at the last rung (they are finished by then and owe their test report).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from depmicro.core.errors import DepmicroError
from depmicro.studies.spec import SYNTHETIC, StudySpec, load_spec, spec_from_json, split_data_key
from depmicro.studies.trainable import SharedData, data_combos, train_trial

STATE_FILE = "depmicro_study.json"
DEFAULT_STORAGE = "depmicro_results"


def default_storage() -> Path:
    return Path(DEFAULT_STORAGE).resolve()


def storage_root(storage: str | os.PathLike | None) -> Path:
    if storage and "://" in str(storage):
        raise DepmicroError(f"--storage {storage}: cloud URIs are not supported yet; use a directory "
                            "(on a cluster: a shared file system mounted at the same path on every node)")
    return Path(storage).resolve() if storage else default_storage()


def experiment_dir(name: str, storage: str | os.PathLike | None) -> Path:
    return storage_root(storage) / name


# --- data, built once on the driver -----------------------------------------------------------

def _needs_dep_stats(spec: StudySpec) -> bool:
    from depmicro.core.model.config import config_from_dict

    base = config_from_dict(spec.base_config)
    modes = {base.dep_mask_mode} | set(spec.ablate.get("dep_mask_mode", []))
    orders = {base.ar_order} | set(spec.ablate.get("ar_order", []))
    if "dep_mask_mode" in spec.search_space:
        modes |= set(spec.search_space["dep_mask_mode"].values)
    if "ar_order" in spec.search_space:
        orders |= set(spec.search_space["ar_order"].values)
    return bool(modes - {"off"}) or "dependency" in orders


def load_study_dataset(ds) -> Any:
    from depmicro.core.data import load_dataset

    if ds.path == SYNTHETIC:
        from depmicro.core.data.synthetic import make_synthetic

        try:
            out = make_synthetic(**ds.synthetic)
        except TypeError as exc:
            raise DepmicroError(f"dataset {ds.name!r}: bad synthetic settings ({exc})") from None
        data = out[0] if isinstance(out, tuple) else out
        data.name = ds.name
        return data
    data = load_dataset(ds.path, metadata=ds.metadata)
    data.name = ds.name
    return data


def prepare_data(spec: StudySpec, cache_dir: Path, log=print) -> SharedData:
    """Load every set, draw the held-out masks, and compute dependency statistics once per (set, seed)."""
    from depmicro.core.data import check_same_taxa, load_dataset
    from depmicro.core.data.evaluation import make_split, training_view

    datasets, pretrain, splits, deps = {}, {}, {}, {}
    need = _needs_dep_stats(spec)
    for ds in spec.datasets:
        data = load_study_dataset(ds)
        datasets[ds.name] = data
        if ds.pretrain:
            pre = tuple(load_dataset(p) for p in ds.pretrain)
            check_same_taxa([data, *pre])
            pretrain[ds.name] = pre
    for key in spec.data_keys:
        name, seed = split_data_key(key)
        data = datasets[name]
        Y = data.normalized
        splits[key] = make_split(Y, seed=seed, test_ratio=spec.test_ratio, val_ratio=spec.val_ratio)
        if need:
            from depmicro.core.deps import cached_dep_stats

            t0 = time.perf_counter()
            deps[key] = cached_dep_stats(training_view(Y, splits[key]), cache_dir=cache_dir, var_names=data.var_names)
            log(f"[{spec.name}] dependency statistics for {key}: {time.perf_counter() - t0:.2f}s (shared by its trials)")
        else:
            deps[key] = None
    return SharedData(spec=spec, datasets=datasets, splits=splits, dep_stats=deps, pretrain=pretrain,
                      cache_dir=str(cache_dir))


def _searches_vae(spec: StudySpec) -> bool:
    from depmicro.core.train.vae_phase import VAE_FIELDS

    return any(k in VAE_FIELDS or k == "vae_pretrain" for k in spec.search_space)


def _train_vae_task(cfg_dict: dict, Y_view, observed, pretrain: list, threads: int):
    """A Ray task: one VAE phase, with the torch thread count its trials use (the same numbers)."""
    import torch

    from depmicro.core.model.config import config_from_dict
    from depmicro.core.train import train_vae_entry

    torch.set_num_threads(threads)
    return train_vae_entry(config_from_dict(cfg_dict), Y_view, observed, pretrain)


def warm_vae(spec: StudySpec, shared: SharedData, log=print) -> None:
    """Train every VAE the study's trials will need once, before they start, and ship the states with
    SharedData (Ray's object store) so each trial loads instead of training.

    Why the object store and not only the cache directory: it reaches every worker node whether or
    not the storage is shared, exactly like the dependency statistics. The states are also written
    to the cache directory, so `study resume` does not retrain them. The VAE settings of a trial are
    known ahead only when the search space leaves every VAE field alone (arms and replicates are
    fixed); otherwise the trials fill the cache lazily (fit's vae_cache_dir). Distinct states train
    as parallel Ray tasks with a trial's CPU share each.
    """
    import ray

    from depmicro.core.model.config import config_from_dict, config_to_dict
    from depmicro.core.data.evaluation import training_view
    from depmicro.core.train.vae_phase import read_vae_entry, save_vae_entry, vae_cache_key
    from depmicro.studies.trainable import resolve_trial

    if _searches_vae(spec):
        log(f"[{spec.name}] VAE: the search space changes VAE settings; trials train and cache them lazily")
        return
    threads = max(1, int(round(spec.resources.cpu)))
    task = ray.remote(num_cpus=spec.resources.cpu)(_train_vae_task)
    t0 = time.perf_counter()
    plan: dict[str, list] = {}  # data key -> [(vae key, Ray ref or None for a cache hit)]
    planned: set[str] = set()
    for key in spec.data_keys:
        name, _ = split_data_key(key)
        data, split = shared.datasets[name], shared.splits[key]
        view, obs = training_view(data.normalized, split), split.observed
        plan[key] = []
        for arm in spec.arms:
            for r in range(spec.replicates):
                cfg = config_from_dict(resolve_trial(spec, {"data": key, "arm": arm, "replicate": r}).config)
                pre = [p.normalized for p in shared.pretrain.get(name, ())] if cfg.vae_pretrain else []
                vkey = vae_cache_key(cfg, view, obs, pre)
                if vkey in planned:
                    continue
                planned.add(vkey)
                hit = read_vae_entry(shared.cache_dir, vkey) if shared.cache_dir else None
                if hit is not None:
                    shared.vae[vkey] = hit
                    plan[key].append((vkey, None))
                else:  # all tasks go out before any result is awaited: distinct states train in parallel
                    plan[key].append((vkey, task.remote(config_to_dict(cfg), view, obs, pre, threads)))
    for key, items in plan.items():
        trained = []
        for vkey, ref in items:
            if ref is None:
                continue
            entry = ray.get(ref)
            shared.vae[vkey] = entry
            trained.append(entry)
            if shared.cache_dir:
                try:
                    save_vae_entry(entry, shared.cache_dir)
                except OSError:
                    pass  # an unwritable cache costs a resume the retraining, nothing else
        log(f"[{spec.name}] VAE for {key}: {sum(e.seconds for e in trained):.2f}s training "
            f"({len(trained)} trained, {len(items) - len(trained)} from cache, {time.perf_counter() - t0:.2f}s so far; "
            "shared by its trials)")


# --- the Tuner --------------------------------------------------------------------------------

def param_space(spec: StudySpec) -> dict:
    from ray import tune

    space: dict = {}
    for k, p in spec.search_space.items():
        if p.type == "grid" or (spec.search == "grid" and p.type == "choice"):
            space[k] = tune.grid_search(list(p.values))
        elif p.type == "choice":
            space[k] = tune.choice(list(p.values))
        elif p.type == "uniform":
            space[k] = tune.uniform(p.low, p.high)
        elif p.type == "loguniform":
            space[k] = tune.loguniform(p.low, p.high)
        else:  # int, inclusive bounds
            space[k] = tune.randint(int(p.low), int(p.high) + 1)
    if spec.search != "optuna":
        keys = spec.data_keys
        space["data"] = tune.grid_search(keys) if len(keys) > 1 else keys[0]
        if spec.replicates > 1:
            space["replicate"] = tune.grid_search(list(range(spec.replicates)))
        arms = list(spec.arms)
        space["arm"] = tune.grid_search(arms) if len(arms) > 1 else arms[0]
    return space


def _search_alg(spec: StudySpec):
    if spec.search != "optuna":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=spec.search_seed)
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(metric=spec.metric, mode=spec.mode, seed=spec.search_seed)
    n = len(data_combos(spec))
    if n > 1:
        from ray.tune.search import Repeater

        searcher = Repeater(searcher, repeat=n)
    return searcher


def _scheduler(spec: StudySpec):
    if spec.scheduler.type == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="epoch", max_t=spec.max_epochs(), grace_period=spec.scheduler.grace_period,
                         reduction_factor=spec.scheduler.reduction_factor, stop_last_trials=False)


def _num_samples(spec: StudySpec) -> int:
    return spec.num_samples * len(data_combos(spec)) if spec.search == "optuna" else spec.num_samples


def _trainable(shared: SharedData):
    from ray import tune

    res = {"cpu": shared.spec.resources.cpu, "gpu": shared.spec.resources.gpu}
    return tune.with_resources(tune.with_parameters(train_trial, shared=shared), res)


def _run_config(spec: StudySpec, storage: Path, callbacks: list):
    from ray import tune

    return tune.RunConfig(
        name=spec.name, storage_path=str(storage), callbacks=callbacks, verbose=0,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
    )


# --- progress ---------------------------------------------------------------------------------

def _progress_callback(spec: StudySpec, total: int):
    from ray.tune import Callback

    from depmicro.studies.tracking import print_line

    class Progress(Callback):
        """One line per event on stderr: start, validated epoch, end. Quiet enough for a log file."""

        def __init__(self) -> None:
            self.t0 = time.time()
            self.done = 0

        def __setstate__(self, state):  # restored with the Tuner: restart the clock and the count
            self.__dict__.update(state)
            self.t0 = time.time()

        def _p(self, text: str) -> None:
            print_line(f"[{spec.name} {time.time() - self.t0:6.0f}s] {text}")

        def on_trial_start(self, iteration, trials, trial, **info):
            from depmicro.studies.trainable import resolve_trial

            s = resolve_trial(spec, trial.config)
            shown = ", ".join(f"{k}={_fmt(trial.config[k])}" for k in spec.search_space if k in trial.config)
            self._p(f"trial {trial.trial_id} start  {s.data_key} {s.arm}{' ' + shown if shown else ''}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            m = result.get(spec.metric)
            self._p(f"trial {trial.trial_id} epoch {result.get('epoch')}  {spec.metric}={_fmt(m)}"
                    + (f"  test_pcc_per_microbe={_fmt(result['test_pcc_per_microbe'])}" if "test_pcc_per_microbe" in result else ""))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            how = "finished" if "test_pcc" in (trial.last_result or {}) else "stopped early"
            self._p(f"trial {trial.trial_id} {how} ({self.done}/{total} done this session)")

        def on_trial_recover(self, iteration, trials, trial, **info):
            self._p(f"trial {trial.trial_id} failed, retrying from its last checkpoint")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._p(f"trial {trial.trial_id} ERROR (see {trial.path})")

    return Progress()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# --- commands ---------------------------------------------------------------------------------

def _write_state(exp: Path, state: dict) -> None:
    from depmicro.core.io.atomic import atomic_write_text

    exp.mkdir(parents=True, exist_ok=True)
    atomic_write_text(exp / STATE_FILE, json.dumps(state, indent=2))


def _read_state(exp: Path) -> dict:
    p = exp / STATE_FILE
    if not p.is_file():
        raise DepmicroError(f"no study at {exp} (no {STATE_FILE}); check the name and --storage")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        raise DepmicroError(f"{p}: unreadable study state") from None


def _run_baselines(spec: StudySpec, shared: SharedData, tracking_uri: str, exp_id: str, parent: str, log) -> None:
    import numpy as np

    from depmicro.core.data.baselines import impute_with_baseline
    from depmicro.core.data.evaluation import evaluate, per_microbe_pcc
    from depmicro.studies.tracking import client_for, find_runs, log_baseline

    client = client_for(tracking_uri)
    for method in spec.baselines:
        for key in spec.data_keys:
            name, seed = split_data_key(key)
            done = find_runs(client, exp_id, spec.name, "baseline", method=method, dataset=name, seed=seed)
            if done and done[0].info.status == "FINISHED":
                continue
            data, split = shared.datasets[name], shared.splits[key]
            Y = data.normalized
            filled, seconds = impute_with_baseline(method, Y, split.observed, seed=seed)
            metrics = evaluate(Y, filled, split.test)
            metrics["seconds"] = seconds
            clean = lambda a: [None if not np.isfinite(x) else float(x) for x in a]  # noqa: E731
            per = {"var_names": list(data.var_names), "test": clean(per_microbe_pcc(Y, filled, split.test)),
                   "val": clean(per_microbe_pcc(Y, filled, split.val))}
            log_baseline(spec, tracking_uri, exp_id, parent, method, name, seed,
                         {k: v for k, v in metrics.items() if k != "seconds"} | {"seconds": metrics["seconds"]}, per)
            log(f"[{spec.name}] baseline {method} on {key}: test_pcc_per_microbe={metrics['pcc_per_microbe']:.4f}")


def run_study(path: str | os.PathLike, address: str | None = None, tracking_uri: str | None = None,
              storage: str | os.PathLike | None = None, log=None) -> dict:
    """Validate the study file, start or join Ray, and run every trial (`depmicro study run`)."""
    from ray import tune

    from depmicro.studies import tracking

    log = log or tracking.print_line
    spec = load_spec(path)  # before anything starts: a bad file costs a second
    tracking_uri = tracking.normalize_tracking_uri(tracking_uri or tracking.default_tracking_uri())
    storage = storage_root(storage)
    exp = storage / spec.name
    if tune.Tuner.can_restore(str(exp)):
        raise DepmicroError(f"study {spec.name!r} already exists in {storage}; continue it with "
                            f"`depmicro study resume {spec.name}` or give the study another name")
    client = tracking.client_for(tracking_uri)
    exp_obj = client.get_experiment_by_name(tracking.experiment_name(spec.name))
    if exp_obj is not None and tracking.find_runs(client, exp_obj.experiment_id, spec.name, "trial"):
        raise DepmicroError(f"MLflow at {tracking_uri} already holds trials of study {spec.name!r}; "
                            "resume it or give the study another name")
    spec_text = Path(path).read_text()
    exp_id, parent = tracking.start_study(spec, tracking_uri, spec_text)
    _write_state(exp, {"spec": spec.to_dict(), "tracking_uri": tracking_uri, "experiment_id": exp_id,
                       "parent_run_id": parent, "created": time.time()})
    return _execute(spec, exp, tracking_uri, exp_id, parent, address, log, restore=False)


def resume_study(name: str, address: str | None = None, tracking_uri: str | None = None,
                 storage: str | os.PathLike | None = None, log=None) -> dict:
    """Continue a study whose driver stopped: finished trials stay, the rest continue from checkpoints."""
    from ray import tune

    from depmicro.studies import tracking

    log = log or tracking.print_line
    exp = experiment_dir(name, storage)
    state = _read_state(exp)
    if tracking_uri and tracking.normalize_tracking_uri(tracking_uri) != state["tracking_uri"]:
        raise DepmicroError(f"study {name!r} is tracked at {state['tracking_uri']}; resume it there (got {tracking_uri})")
    spec = spec_from_json(state["spec"])
    uri = state["tracking_uri"]
    if not tune.Tuner.can_restore(str(exp)):
        raise DepmicroError(f"study {name!r} at {exp} has no Tune state to resume (its driver stopped before the "
                            "first trial started); run the study file again")
    exp_id, parent = tracking.start_study(spec, uri)
    return _execute(spec, exp, uri, exp_id, parent, address, log, restore=True)


def _execute(spec: StudySpec, exp: Path, tracking_uri: str, exp_id: str, parent: str, address: str | None,
             log, restore: bool) -> dict:
    from ray import tune

    from depmicro.cluster.connect import connect
    from depmicro.studies import tracking

    t0 = time.time()
    # checkpoints every epoch force experiment snapshots (what makes resume exact); do not warn about it
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    cluster = connect(address)
    log(f"[{spec.name}] Ray: {cluster['nodes']} node(s), {cluster['cpus']:g} CPU, {cluster['gpus']:g} GPU; "
        f"MLflow: {tracking_uri}; storage: {exp}")
    shared = prepare_data(spec, exp.parent / ".dep_cache", log)
    warm_vae(spec, shared, log)
    if spec.baselines:
        _run_baselines(spec, shared, tracking_uri, exp_id, parent, log)
    trainable = _trainable(shared)
    total = spec.n_trials()
    status = "FAILED"
    try:
        if restore:
            tuner = tune.Tuner.restore(str(exp), trainable=trainable, resume_errored=True)
        else:
            tracker = tracking.MlflowTracker(spec, tracking_uri, exp_id, parent)
            tuner = tune.Tuner(
                trainable, param_space=param_space(spec),
                tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, search_alg=_search_alg(spec),
                                            scheduler=_scheduler(spec), num_samples=_num_samples(spec),
                                            max_concurrent_trials=spec.max_concurrent_trials),
                run_config=_run_config(spec, exp.parent, [tracker, _progress_callback(spec, total)]),
            )
        log(f"[{spec.name}] {'resuming' if restore else 'running'} {total} trial(s), "
            f"{spec.max_concurrent_trials} at a time, {spec.resources.cpu:g} CPU / {spec.resources.gpu:g} GPU each")
        with contextlib.redirect_stdout(sys.stderr):  # Tune prints tables; stdout carries only the result (--json)
            tuner.fit()
        # MLflow's status tags are the record (Tune counts a trial interrupted by Ctrl-C as ended, too)
        final_status = tracking.study_status(spec.name, tracking_uri)
        counts = final_status["counts"]
        done = sum(v for k, v in counts.items() if k in tracking.TERMINAL)
        status = "FINISHED" if done >= total else "KILLED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracking.end_study(tracking_uri, parent, status)
        if status != "FINISHED":
            tracking.mark_interrupted(spec.name, tracking_uri, exp_id)
    summary = {"name": spec.name, "state": status, "storage": str(exp), "tracking_uri": tracking_uri,
               "trials": sum(counts.values()), "counts": counts, "seconds": round(time.time() - t0, 1)}
    if status != "FINISHED":
        summary["next"] = f"depmicro study resume {spec.name} --storage {exp.parent}"
    best = _best_finished(spec, final_status["trials"])
    if best:
        summary["best"] = best
    return summary


def _best_finished(spec: StudySpec, trials: list[dict]) -> dict | None:
    """The finished trial with the best best-so-far validation score (the model that was kept and tested)."""
    key = spec.metric if spec.metric.startswith("best_") else f"best_{spec.metric}"
    fin = [t for t in trials if t["status"] == "TERMINATED" and key in t["metrics"]]
    if not fin:
        return None
    pick = (max if spec.mode == "max" else min)(fin, key=lambda t: t["metrics"][key])
    return {"trial_id": pick["trial_id"], key: pick["metrics"][key],
            "test_pcc_per_microbe": pick["metrics"].get("test_pcc_per_microbe"),
            "config": {k: pick["config"].get(k) for k in spec.search_space}, "run_id": pick["run_id"]}


def study_status(name: str, tracking_uri: str | None = None, storage: str | os.PathLike | None = None) -> dict:
    """The study from MLflow (every trial the driver saw), plus whether Tune can resume it."""
    from depmicro.studies import tracking

    exp = experiment_dir(name, storage)
    uri = tracking_uri
    if uri is None and (exp / STATE_FILE).is_file():
        uri = _read_state(exp)["tracking_uri"]
    uri = tracking.normalize_tracking_uri(uri or tracking.default_tracking_uri())
    out = tracking.study_status(name, uri)
    out["storage"] = str(exp)
    out["resumable"] = bool((exp / STATE_FILE).is_file()) and out["state"] != "FINISHED"
    if (exp / STATE_FILE).is_file():
        out["expected_trials"] = spec_from_json(_read_state(exp)["spec"]).n_trials()
    return out
