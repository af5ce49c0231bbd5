"""Training DepMicroDiff through accelerate.Accelerator.

Two phases: the VAE (pretrained on other sets with the same taxa, then fine-tuned on the target's
training view), then the DAT epochs, each followed by validation on split.val. The per-epoch hook
`on_epoch` is where a tuner (Ray Tune / ASHA) plugs in; it can stop training by returning True.
Held-out (val/test) values are never read: everything trains on `training_view(Y, split)`.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from depmicro.core.model.config import ModelConfig
from depmicro.core.data import Dataset, check_same_taxa
from depmicro.core.model.imputer import DepMicroDiffImputer
from depmicro.core.errors import DepmicroError
from depmicro.core.model.ar import token_rank
from depmicro.core.data.evaluation import Split, evaluate, training_view
from depmicro.core.model.vae import TokenVAE, train_vae
from depmicro.core.train.vae_phase import VaeEntry, read_vae_entry, save_vae_entry, vae_cache_key

LOWER_IS_BETTER = ("rmse", "mae")


@dataclass
class EpochReport:
    epoch: int  # 1-based
    train_loss: float
    val: dict[str, float]
    seconds: float
    _saver: Callable[[Path], None] | None = field(default=None, repr=False, compare=False)
    # the live model after this epoch (eval mode; not the best-so-far), for hooks that evaluate more than
    # validation metrics (tests/bench/dat_epochs.py). Read it, do not keep or train it.
    model: DepMicroDiffImputer | None = field(default=None, repr=False, compare=False)

    def save_checkpoint(self, directory: str | Path) -> None:
        """Full resumable state (model, optimizer, epoch, RNG, best-so-far) that is also a loadable model."""
        if self._saver is None:
            raise DepmicroError("this epoch report carries no training state to save")
        self._saver(Path(directory))


OnEpoch = Callable[[EpochReport], "bool | None"]


@dataclass
class FitResult:
    imputer: DepMicroDiffImputer  # the best-validation model
    val: dict[str, float]
    test: dict[str, float]
    history: list[dict]
    seconds: float
    epochs: int
    vae_source: str = "trained"  # trained | cache | shared | checkpoint (resumed: the VAE came with the DAT)
    vae_seconds: float = 0.0     # seconds this fit spent training the VAE (0 on a hit)


# --- setup ---------------------------------------------------------------------------------------

def dependency_inputs(cfg: ModelConfig, Y_view: np.ndarray, dep_stats=None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Dep matrix and F matrix from statistics of the training view (held-out entries NaN)."""
    need_dep = cfg.dep_mask_mode != "off"
    need_f = cfg.ar_order == "dependency"
    if not (need_dep or need_f):
        return None, None
    from depmicro.core.deps import cached_dep_stats, dependency_mask

    stats = dep_stats if dep_stats is not None else cached_dep_stats(Y_view)
    dep = dependency_mask(stats, cfg.f_threshold, cfg.mi_threshold) if need_dep else None
    return dep, np.asarray(stats.f_stat) if need_f else None


def build_imputer(cfg: ModelConfig, Y_view: np.ndarray, observed: np.ndarray, var_names: Sequence[str] | None,
                  metadata: Sequence[str | None] | None, dep_stats=None) -> DepMicroDiffImputer:
    dep, f_stat = dependency_inputs(cfg, Y_view, dep_stats)
    rank = token_rank(cfg.ar_order, Y_view, observed, f_stat, cfg.f_threshold)
    meta_dim = 0
    if cfg.use_metadata and metadata is not None and any(metadata):
        from depmicro.core.model.metadata import MetadataEncoder

        meta_dim = MetadataEncoder(cfg.metadata_model).dim
    return DepMicroDiffImputer(cfg, Y_view.shape[1], var_names, meta_dim, dep=dep, rank=rank)


def _seed_all(seed: int) -> None:
    from accelerate.utils import set_seed

    set_seed(seed)
    random.seed(seed)


def _accelerator(cfg: ModelConfig):
    from accelerate import Accelerator

    gpu = torch.cuda.is_available()
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if gpu and torch.cuda.is_bf16_supported() else "no"
    if mp == "bf16" and not gpu:
        mp = "no"  # bf16 autocast on CPU is slow and not what the paper ran; GPU only
    return Accelerator(mixed_precision=mp, cpu=not gpu)


def _phase_seed(seed: int, phase: str) -> int:
    """A seed for one training phase derived from cfg.seed; hashed, so it never equals seed + replicate."""
    return int.from_bytes(hashlib.sha256(f"depmicro:{seed}:{phase}".encode()).digest()[:4], "little")


def train_vae_entry(cfg: ModelConfig, Y_view: np.ndarray, observed: np.ndarray, pretrain: Sequence[np.ndarray] = (),
                    key: str | None = None) -> VaeEntry:
    """The VAE phase on its own: pretraining on the other sets (leave-target-out), then fine-tuning on
    the target's training view, `cfg.vae_epochs` each, on the CPU.

    It reseeds every RNG from cfg.seed first and builds its own TokenVAE, so its result is a function
    of the vae_cache_key inputs only (the same init the imputer draws: the VAE is the first module
    built after torch.manual_seed(cfg.seed)); before, its noise continued the torch stream after the
    DAT's initialisation, so the VAE changed with hidden_dim or n_layers, which studies search.
    """
    t0 = time.perf_counter()
    _seed_all(cfg.seed)
    vae = TokenVAE(Y_view.shape[1], cfg.latent_dim, cfg.vae_hidden)
    rng = np.random.default_rng(cfg.seed)
    cpu = torch.device("cpu")
    losses = {}
    if cfg.vae_pretrain and len(pretrain):
        losses["vae_pretrain_loss"] = train_vae(vae, [(P, np.ones_like(P, dtype=bool)) for P in pretrain], cfg.vae_epochs,
                                                cfg.vae_lr, cfg.vae_beta, cfg.batch_size, cfg.train_mask_ratio, rng, cpu)[-1:]
    losses["vae_loss"] = train_vae(vae, [(Y_view, observed)], cfg.vae_epochs, cfg.vae_lr, cfg.vae_beta, cfg.batch_size,
                                   cfg.train_mask_ratio, rng, cpu)[-1:]
    state = {k: v.detach().cpu().clone() for k, v in vae.state_dict().items()}
    key = key or vae_cache_key(cfg, Y_view, observed, pretrain)
    return VaeEntry(key=key, state=state, losses=losses, seconds=time.perf_counter() - t0)


def cached_vae_entry(cfg: ModelConfig, Y_view: np.ndarray, observed: np.ndarray, pretrain: Sequence[np.ndarray] = (), *,
                     cache_dir: str | Path | None = None, entries: Mapping[str, VaeEntry] | None = None) -> tuple[VaeEntry, str]:
    """The trained VAE for these inputs and where it came from: "shared" (`entries`, e.g. shipped by a
    study driver), "cache" (a file in `cache_dir`) or "trained" (then stored in `cache_dir`, if given).
    A corrupt or foreign file in `cache_dir` counts as a miss and is replaced."""
    key = vae_cache_key(cfg, Y_view, observed, pretrain)
    if entries and key in entries:
        return entries[key], "shared"
    if cache_dir is not None:
        hit = read_vae_entry(cache_dir, key)
        if hit is not None:
            return hit, "cache"
    entry = train_vae_entry(cfg, Y_view, observed, pretrain, key)
    if cache_dir is not None:
        try:
            save_vae_entry(entry, cache_dir)
        except OSError:
            pass  # an unwritable (or another node's) cache costs time, not correctness
    return entry, "trained"


def _pretrain_vae(imp: DepMicroDiffImputer, Y_view: np.ndarray, observed: np.ndarray, pretrain: Sequence[np.ndarray],
                  cache_dir: str | Path | None = None, entries: Mapping[str, VaeEntry] | None = None) -> dict:
    """Give `imp` its trained, frozen VAE (from the cache or trained now), then reseed every RNG.

    Why the reseed: training the VAE draws from the global torch stream and a cache hit does not,
    so without it the DAT's noise and dropout would depend on whether the VAE was cached. Both
    paths reseed torch/numpy/python from a seed derived from cfg.seed right after the phase, so a hit
    and a miss continue identically (chosen over saving RNG states in the entry: those would depend
    on the DAT's initialisation, which is not in the key). This changed the random stream of
    uncached training too (measured README figures predate it).
    """
    cfg = imp.cfg
    entry, source = cached_vae_entry(cfg, Y_view, observed, pretrain, cache_dir=cache_dir, entries=entries)
    imp.vae.load_state_dict(entry.state)
    imp.vae.eval()
    for p in imp.vae.parameters():
        p.requires_grad_(False)
    imp.set_latent_stats(Y_view, observed)  # one encoding pass: cheaper to recompute than to store
    _seed_all(_phase_seed(cfg.seed, "dat"))
    return {**entry.losses, "source": source, "seconds": entry.seconds if source == "trained" else 0.0}


class _Trainer:
    """One DAT training run; holds what a checkpoint must capture."""

    def __init__(self, imp: DepMicroDiffImputer, Y_view: np.ndarray, observed: np.ndarray, metadata):
        cfg = imp.cfg
        self.imp, self.cfg = imp, cfg
        self.acc = _accelerator(cfg)
        imp.to(self.acc.device)
        self.Y = np.where(observed, np.nan_to_num(Y_view), 0.0).astype(np.float32)
        self.obs = observed
        meta, has = imp.meta_vectors(metadata, len(Y_view))
        self.meta, self.has = meta, has
        params = [p for p in imp.dat.parameters()]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.dat, self.opt = self.acc.prepare(imp.dat, self.opt)
        self.rng = np.random.default_rng(cfg.seed + 1)

    def epoch(self, progress: bool = False) -> float:
        imp, cfg, dev = self.imp, self.cfg, self.acc.device
        imp.net.train()
        imp.vae.eval()
        perm = self.rng.permutation(len(self.Y))
        batches = [perm[i : i + cfg.batch_size] for i in range(0, len(perm), cfg.batch_size)]
        if len(batches) > 1 and len(batches[-1]) < max(2, cfg.batch_size // 4):
            batches[-2] = np.concatenate([batches[-2], batches.pop()])
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, leave=False, desc="batches", file=__import__("sys").stderr)
        total, n = 0.0, 0
        for idx in batches:
            y = torch.as_tensor(self.Y[idx], device=dev)
            m = torch.as_tensor(self.obs[idx], device=dev)
            meta = None if self.meta is None else torch.as_tensor(self.meta[idx], device=dev)
            has = torch.as_tensor(self.has[idx], device=dev)
            with self.acc.autocast():
                loss = imp.loss(y, m, meta, has, self.rng)
            self.opt.zero_grad(set_to_none=True)
            self.acc.backward(loss)
            if cfg.grad_clip > 0:
                self.acc.clip_grad_norm_(imp.dat.parameters(), cfg.grad_clip)
            self.opt.step()
            total += loss.item() * len(idx)
            n += len(idx)
        imp.net.eval()
        return total / max(n, 1)

    # resumable state (everything the model bundle does not hold)
    def state(self, epoch: int, best: dict, history: list[dict], stale: int) -> tuple[dict, dict]:
        tensors = {"optimizer": self.opt.state_dict(), "torch_rng": torch.get_rng_state(),
                   "best_state": best.get("state") or {}}
        meta = {"epoch": epoch, "np_rng": self.rng.bit_generator.state, "history": history, "stale": stale,
                "best_score": best.get("score"), "best_epoch": best.get("epoch"), "best_val": best.get("val"),
                "py_rng": None}
        return tensors, meta

    def restore(self, directory: Path) -> tuple[int, dict, list[dict], int]:
        from safetensors.torch import load_file

        d = Path(directory)
        if not (d / "train_state.json").is_file() or not (d / "train_state.pt").is_file():
            raise DepmicroError(f"{d}: not a training checkpoint (train_state.json / train_state.pt missing)")
        from depmicro.core.io.manifest import MANIFEST, verify_manifest

        if (d / MANIFEST).exists():
            verify_manifest(d)
        meta = json.loads((d / "train_state.json").read_text())
        tensors = torch.load(d / "train_state.pt", weights_only=True, map_location="cpu")
        self.imp.net.load_state_dict(load_file(str(d / "model.safetensors")))
        norm = json.loads((d / "normalization.json").read_text())
        self.imp.latent_mean = np.asarray(norm["latent_mean"], dtype=np.float32)
        self.imp.latent_std = np.asarray(norm["latent_std"], dtype=np.float32)
        self.imp.latent_lo = np.asarray(norm["latent_lo"], dtype=np.float32)
        self.imp.latent_hi = np.asarray(norm["latent_hi"], dtype=np.float32)
        self.opt.load_state_dict(tensors["optimizer"])
        torch.set_rng_state(tensors["torch_rng"])
        self.rng.bit_generator.state = meta["np_rng"]
        best = {"score": meta["best_score"], "epoch": meta["best_epoch"], "val": meta["best_val"],
                "state": tensors["best_state"] or None}
        return int(meta["epoch"]), best, meta["history"], int(meta["stale"])


def _save_checkpoint(trainer: _Trainer, directory: Path, epoch: int, best: dict, history: list[dict], stale: int) -> None:
    from depmicro.core.model.bundle import atomic_dir, write_model_files

    tensors, meta = trainer.state(epoch, best, history, stale)

    def fill(d: Path) -> None:
        write_model_files(trainer.imp, d)
        torch.save(tensors, d / "train_state.pt")
        (d / "train_state.json").write_text(json.dumps(meta))

    atomic_dir(directory, fill)


def _better(metric: str, a: float, b: float | None) -> bool:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return not math.isnan(a)
    return a < b if metric in LOWER_IS_BETTER else a > b


# --- entry points --------------------------------------------------------------------------------

def fit(cfg: ModelConfig, data: Dataset, split: Split, *, pretrain: Sequence[Dataset] = (), dep_stats=None,
        on_epoch: OnEpoch | None = None, resume_from: str | Path | None = None, progress: bool = False,
        vae_cache_dir: str | Path | None = None, vae_entries: Mapping[str, VaeEntry] | None = None) -> FitResult:
    """Train on training_view(data, split), select by validation metrics, report test metrics once at the end.

    `vae_cache_dir` / `vae_entries`: where a VAE trained on the same inputs may already be (see
    cached_vae_entry); a hit gives the same result as training it here. On resume the VAE comes from
    the checkpoint and neither is read.
    """
    t_start = time.perf_counter()
    Y = data.normalized
    if split.test.shape != Y.shape:
        raise DepmicroError(f"split masks {split.test.shape} do not match the data {Y.shape}")
    if pretrain:
        check_same_taxa([data, *pretrain])
        if any(p.name == data.name and p.counts.shape == data.counts.shape and np.array_equal(p.counts, data.counts) for p in pretrain):
            raise DepmicroError(f"pretraining sets must not include the target set {data.name!r} (leave-target-out)")
    Y_view = training_view(Y, split)
    observed = split.observed
    metadata = data.metadata_text() if cfg.use_metadata else None
    _seed_all(cfg.seed)
    imp = build_imputer(cfg, Y_view, observed, data.var_names, metadata, dep_stats)
    has_val = bool(split.val.any())
    history: list[dict] = []
    best: dict = {"score": None, "epoch": None, "val": None, "state": None}
    stale = 0
    start = 1
    vae_info = {"source": "checkpoint", "seconds": 0.0}
    if resume_from is None:
        vae_info = _pretrain_vae(imp, Y_view, observed, [p.normalized for p in pretrain], vae_cache_dir, vae_entries)
    else:
        for p in imp.vae.parameters():
            p.requires_grad_(False)
    trainer = _Trainer(imp, Y_view, observed, metadata)
    if resume_from is not None:
        last, best, history, stale = trainer.restore(Path(resume_from))
        start = last + 1
    epoch = start - 1
    for epoch in range(start, cfg.epochs + 1):
        t0 = time.perf_counter()
        loss = trainer.epoch(progress)
        val: dict[str, float] = {}
        if has_val and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
            filled = imp.impute(Y_view, observed, metadata)
            val = evaluate(Y, filled, split.val)
            score = val[cfg.val_metric]
            if _better(cfg.val_metric, score, best["score"]):
                best = {"score": score, "epoch": epoch, "val": val,
                        "state": {k: v.detach().cpu().clone() for k, v in imp.net.state_dict().items()}}
                stale = 0
            else:
                stale += 1
        elif not has_val:
            best = {"score": None, "epoch": epoch, "val": None, "state": None}
        rec = {"epoch": epoch, "train_loss": loss, "val": val, "seconds": time.perf_counter() - t0}
        history.append(rec)
        ep, b, h, s = epoch, dict(best), list(history), stale
        report = EpochReport(epoch, loss, val, rec["seconds"], lambda d, ep=ep, b=b, h=h, s=s: _save_checkpoint(trainer, d, ep, b, h, s),
                             model=imp)
        if progress:  # stderr, so stdout stays clean for --json
            import sys

            shown = f" val {cfg.val_metric}={val[cfg.val_metric]:.4f}" if val else ""
            print(f"epoch {epoch}/{cfg.epochs} loss={loss:.4f}{shown} ({rec['seconds']:.1f}s)", file=sys.stderr, flush=True)
        if on_epoch is not None and on_epoch(report):
            break
        if cfg.patience and stale >= cfg.patience:
            break
    if best.get("state"):
        imp.net.load_state_dict(best["state"])
    imp.net.eval()
    filled = imp.impute(Y_view, observed, metadata)
    val = evaluate(Y, filled, split.val) if has_val else {}
    test = evaluate(Y, filled, split.test)
    imp.to("cpu")
    return FitResult(imputer=imp, val=val, test=test, history=history, seconds=time.perf_counter() - t_start, epochs=epoch,
                     vae_source=vae_info["source"], vae_seconds=float(vae_info["seconds"]))


def train_on_view(imp: DepMicroDiffImputer, Y: np.ndarray, observed: np.ndarray, metadata=None) -> DepMicroDiffImputer:
    """The Imputer-protocol fit: VAE then cfg.epochs of DAT training on the observed entries, no selection."""
    cfg = imp.cfg
    _seed_all(cfg.seed)
    Y_view = np.where(observed, np.nan_to_num(Y), np.nan)
    if cfg.dep_mask_mode != "off" or cfg.ar_order == "dependency":
        dep, f_stat = dependency_inputs(cfg, Y_view)
        imp.dep = dep
        imp.rank = token_rank(cfg.ar_order, Y_view, observed, f_stat, cfg.f_threshold)
    elif cfg.ar_order == "variance":
        imp.rank = token_rank("variance", Y_view, observed)
    if cfg.use_metadata and imp.meta_dim == 0 and metadata is not None and any(metadata):
        warnings.warn("metadata given to fit() but the imputer was built without a metadata projection; ignored")
    _pretrain_vae(imp, Y_view, observed, [])
    trainer = _Trainer(imp, Y_view, observed, metadata)
    for _ in range(cfg.epochs):
        trainer.epoch()
    imp.to("cpu")
    return imp
