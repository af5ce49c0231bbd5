"""What a study computes once on the driver before any trial starts: the data sets, the held-out
splits, the dependency statistics per (data set, seed) and the VAE states its trials will load.
All of it reaches the trials through Ray's object store (SharedData), not through files."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray
import torch

from depmicro.core.data import align_taxa, load_dataset
from depmicro.core.data.evaluation import make_split, protocol_matrix, training_view
from depmicro.core.data.synthetic import make_synthetic
from depmicro.core.deps import cached_dep_stats
from depmicro.core.errors import DepmicroError
from depmicro.core.model.config import config_from_dict, config_to_dict, needs_dep_stats
from depmicro.core.train import train_vae_entry
from depmicro.core.train.vae_phase import VAE_FIELDS, read_vae_entry, save_vae_entry, vae_cache_key
from depmicro.studies.spec import SYNTHETIC, StudySpec, split_data_key
from depmicro.studies.trainable import SharedData, resolve_trial


def _needs_dep_stats(spec: StudySpec) -> bool:
    base = config_from_dict(spec.base_config)
    modes = {base.dep_mask_mode} | set(spec.ablate.get("dep_mask_mode", []))
    orders = {base.ar_order} | set(spec.ablate.get("ar_order", []))
    if "dep_mask_mode" in spec.search_space:
        modes |= set(spec.search_space["dep_mask_mode"].values)
    if "ar_order" in spec.search_space:
        orders |= set(spec.search_space["ar_order"].values)
    return any(needs_dep_stats(mode, order) for mode in modes for order in orders)


def load_study_dataset(ds) -> Any:
    if ds.path == SYNTHETIC:
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
    datasets, pretrain, splits, deps = {}, {}, {}, {}
    need = _needs_dep_stats(spec)
    for ds in spec.datasets:
        data = load_study_dataset(ds)
        datasets[ds.name] = data
        if ds.pretrain:
            pretrain[ds.name] = tuple(align_taxa(data, [load_dataset(p) for p in ds.pretrain]))
    for key in spec.data_keys:
        name, seed = split_data_key(key)
        data = datasets[name]
        splits[key] = make_split(data.counts, seed=seed, test_ratio=spec.test_ratio, val_ratio=spec.val_ratio)
        Y = protocol_matrix(data.counts, splits[key], spec.protocol)
        if need:
            t0 = time.perf_counter()
            deps[key] = cached_dep_stats(training_view(Y, splits[key]), cache_dir=cache_dir, var_names=data.var_names)
            log(f"[{spec.name}] dependency statistics for {key}: {time.perf_counter() - t0:.2f}s (shared by its trials)")
        else:
            deps[key] = None
    return SharedData(spec=spec, datasets=datasets, splits=splits, dep_stats=deps, pretrain=pretrain,
                      cache_dir=str(cache_dir))


def _searches_vae(spec: StudySpec) -> bool:
    return any(k in VAE_FIELDS or k == "vae_pretrain" for k in spec.search_space)


def _train_vae_task(cfg_dict: dict, Y_view, observed, pretrain: list, threads: int):
    """A Ray task: one VAE phase, with the torch thread count its trials use (the same numbers)."""
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
        view, obs = training_view(protocol_matrix(data.counts, split, spec.protocol), split), split.observed
        plan[key] = []
        for arm in spec.arms:
            for r in range(spec.replicates):
                cfg = resolve_trial(spec, {"data": key, "arm": arm, "replicate": r}).config
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
