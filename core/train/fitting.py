"""`fit`: train DepMicroDiff under the held-out protocol and select by validation.

Two phases (train/vae_phase.py, then train/trainer.py): the VAE (pretrained on other sets with the same taxa, then fine-tuned on the target's
training view), then the DAT epochs, each followed by validation on split.val. The per-epoch hook
`on_epoch` is where a tuner (Ray Tune / ASHA) plugs in; it can stop training by returning True.
Held-out (val/test) values are never read: everything trains on `training_view(Y, split)`.
"""
from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from depmicro.core.data import Dataset, check_same_taxa
from depmicro.core.data.evaluation import Split, better, evaluate, protocol_matrix, training_view
from depmicro.core.deps import cached_dep_stats, dependency_mask
from depmicro.core.errors import DepmicroError
from depmicro.core.model.ar import token_rank
from depmicro.core.model.config import ModelConfig
from depmicro.core.model.layout import correlation_layout
from depmicro.core.model.module import DepMicroDiff
from depmicro.core.model.metadata import MetadataEncoder
from depmicro.core.train.trainer import EpochReport, OnEpoch, Trainer, save_checkpoint, seed_all
from depmicro.core.train.vae_phase import VaeEntry, choose_factor_rank, pretrain_vae


@dataclass
class FitResult:
    imputer: DepMicroDiff  # the best-validation model
    val: dict[str, float]
    test: dict[str, float]
    filled: np.ndarray  # its imputation of the training view (every held-out entry filled), scored as val/test
    history: list[dict]
    seconds: float
    epochs: int
    vae_source: str = "trained"  # trained | cache | shared | checkpoint (resumed: the VAE came with the DAT)
    vae_seconds: float = 0.0     # seconds this fit spent training the VAE (0 on a hit)
    factor_rank_scores: dict[int, float] | None = None  # vae_factor_rank_alt: each rank's encoder on validation


# --- setup ---------------------------------------------------------------------------------------

def dependency_inputs(cfg: ModelConfig, Y_view: np.ndarray, dep_stats=None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Dep matrix and F matrix from statistics of the training view (held-out entries NaN)."""
    if not cfg.needs_dep_stats:
        return None, None
    need_dep, need_f = cfg.uses_dep_mask, cfg.uses_f_order
    stats = dep_stats if dep_stats is not None else cached_dep_stats(Y_view)
    dep = dependency_mask(stats, cfg.f_threshold, cfg.mi_threshold) if need_dep else None
    return dep, np.asarray(stats.f_stat) if need_f else None


def build_imputer(cfg: ModelConfig, Y_view: np.ndarray, observed: np.ndarray, var_names: Sequence[str] | None,
                  metadata: Sequence[str | None] | None, dep_stats=None) -> DepMicroDiff:
    dep, f_stat = dependency_inputs(cfg, Y_view, dep_stats)
    rank = token_rank(cfg.ar_order, Y_view, observed, f_stat, cfg.f_threshold)
    meta_dim = 0
    if cfg.use_metadata and metadata is not None and any(metadata):
        meta_dim = MetadataEncoder(cfg.metadata_model).dim
    imp = DepMicroDiff(cfg, Y_view.shape[1], var_names, meta_dim, dep=dep, rank=rank)
    lay_out_blocks(imp, Y_view, observed)
    return imp


def lay_out_blocks(imp: DepMicroDiff, Y_view: np.ndarray, observed: np.ndarray) -> None:
    """With `attn_layout: correlation`, which microbes share a DAT attention block, from the training view."""
    if imp.cfg.attn_layout == "correlation":
        imp.dat.set_layout(correlation_layout(Y_view, observed, imp.cfg.attn_block))


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
    Y, Y_view, observed = _views(cfg, data, split, pretrain)
    metadata = data.metadata_text() if cfg.use_metadata else None
    pre = [p.normalized for p in pretrain]
    rank_scores, rank_vae_seconds = None, 0.0
    if cfg.vae_factor_rank_alt and resume_from is None and split.val.any():
        cfg, vae_entries, rank_scores, rank_vae_seconds = choose_factor_rank(cfg, Y, Y_view, observed, split.val, pre,
                                                                             vae_cache_dir, vae_entries)
    seed_all(cfg.seed)
    imp = build_imputer(cfg, Y_view, observed, data.var_names, metadata, dep_stats)
    vae_info = {"source": "checkpoint", "seconds": 0.0}
    if resume_from is None:
        vae_info = pretrain_vae(imp, Y_view, observed, pre, vae_cache_dir, vae_entries)
        if rank_scores is not None and rank_vae_seconds > 0:  # choose_factor_rank trained at least one of the two
            vae_info = {**vae_info, "source": "trained", "seconds": rank_vae_seconds}
    else:
        for p in imp.vae.parameters():
            p.requires_grad_(False)
    trainer = Trainer(imp, Y_view, observed, metadata)
    history: list[dict] = []
    best: dict = {"score": None, "epoch": None, "val": None, "state": None}
    stale, start = 0, 1
    if resume_from is not None:
        last, best, history, stale = trainer.restore(Path(resume_from))
        start = last + 1
    epoch, n_epochs = start - 1, trainer.n_epochs
    for epoch in range(start, n_epochs + 1):
        t0 = time.perf_counter()
        loss = trainer.epoch(progress)
        val: dict[str, float] = {}
        if not split.val.any():
            best = {"score": None, "epoch": epoch, "val": None, "state": None}
        elif epoch % cfg.val_every == 0 or epoch == n_epochs:
            val, best, stale = _validate(trainer, Y, Y_view, observed, metadata, split, epoch, best, stale)
        rec = {"epoch": epoch, "train_loss": loss, "val": val, "seconds": time.perf_counter() - t0, "step": trainer.step}
        history.append(rec)
        if progress:  # stderr, so stdout stays clean for --json
            shown = f" val {cfg.val_metric}={val[cfg.val_metric]:.4f}" if val else ""
            print(f"epoch {epoch}/{n_epochs} loss={loss:.4f}{shown} ({rec['seconds']:.1f}s)", file=sys.stderr, flush=True)
        if on_epoch is not None and on_epoch(_report(trainer, rec, n_epochs, best, history, stale)):
            break
        if cfg.patience and stale >= cfg.patience:
            break
    filled, val, test = _finish(trainer, best, Y, Y_view, observed, metadata, split)
    return FitResult(imputer=imp, val=val, test=test, filled=filled, history=history, seconds=time.perf_counter() - t_start, epochs=epoch,
                     vae_source=vae_info["source"], vae_seconds=float(vae_info["seconds"]), factor_rank_scores=rank_scores)


def _views(cfg: ModelConfig, data: Dataset, split: Split, pretrain: Sequence[Dataset]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The matrix scored under cfg.protocol, its training view (held-out entries NaN) and the observed mask."""
    if split.test.shape != data.counts.shape:
        raise DepmicroError(f"split masks {split.test.shape} do not match the data {data.counts.shape}")
    Y = protocol_matrix(data.counts, split, cfg.protocol)
    if pretrain:
        check_same_taxa([data, *pretrain])
        if any(p.name == data.name and p.counts.shape == data.counts.shape and np.array_equal(p.counts, data.counts) for p in pretrain):
            raise DepmicroError(f"pretraining sets must not include the target set {data.name!r} (leave-target-out)")
    return Y, training_view(Y, split), split.observed


def _validate(trainer: Trainer, Y: np.ndarray, Y_view: np.ndarray, observed: np.ndarray, metadata, split: Split,
              epoch: int, best: dict, stale: int) -> tuple[dict, dict, int]:
    """Score split.val with the EMA weights; a better score replaces `best` (and its state), else `stale` grows.

    Only the rows holding validation entries are imputed: each row's estimate depends on that row alone, and
    the metrics read only split.val, so the scores are those of the whole table at a fraction of the cost
    (validation runs every epoch and was about as costly as the training steps)."""
    imp, metric = trainer.imp, trainer.imp.cfg.val_metric
    rows = np.flatnonzero(split.val.any(axis=1))
    meta_rows = None if metadata is None else [metadata[i] for i in rows]
    with trainer.ema_swapped():  # validation scores (and the best state keeps) the EMA weights
        val = evaluate(Y[rows], imp.impute(Y_view[rows], observed[rows], meta_rows), split.val[rows])
        if better(metric, val[metric], best["score"]):
            state = {k: v.detach().cpu().clone() for k, v in imp.net.state_dict().items()}
            return val, {"score": val[metric], "epoch": epoch, "val": val, "state": state}, 0
    return val, best, stale + 1


def _report(trainer: Trainer, rec: dict, n_epochs: int, best: dict, history: list[dict], stale: int) -> EpochReport:
    """What on_epoch sees; its save_checkpoint writes the state as of this epoch."""
    ep, b, h = rec["epoch"], dict(best), list(history)
    return EpochReport(ep, rec["train_loss"], rec["val"], rec["seconds"],
                       lambda d: save_checkpoint(trainer, d, ep, b, h, stale),
                       model=trainer.imp, total_epochs=n_epochs, ema_weights=trainer.ema_swapped)


def _finish(trainer: Trainer, best: dict, Y: np.ndarray, Y_view: np.ndarray, observed: np.ndarray, metadata,
            split: Split) -> tuple[np.ndarray, dict, dict]:
    """Keep the best-validation weights (else the EMA ones), impute the view once, score val and test from it."""
    imp = trainer.imp
    if best.get("state"):
        imp.net.load_state_dict(best["state"])
    else:
        trainer.use_ema()
    imp.net.eval()
    filled = imp.impute(Y_view, observed, metadata)
    val = evaluate(Y, filled, split.val) if split.val.any() else {}
    test = evaluate(Y, filled, split.test)
    imp.to("cpu")
    return filled, val, test


def train_on_view(imp: DepMicroDiff, Y: np.ndarray, observed: np.ndarray, metadata=None) -> DepMicroDiff:
    """The Imputer-protocol fit: VAE then cfg.epochs (or cfg.train_steps) of DAT training on the observed entries, no selection."""
    cfg = imp.cfg
    seed_all(cfg.seed)
    Y_view = np.where(observed, np.nan_to_num(Y), np.nan)
    if cfg.needs_dep_stats:
        dep, f_stat = dependency_inputs(cfg, Y_view)
        imp.dep = dep
        imp.rank = token_rank(cfg.ar_order, Y_view, observed, f_stat, cfg.f_threshold)
    elif cfg.ar_order == "variance":
        imp.rank = token_rank("variance", Y_view, observed)
    lay_out_blocks(imp, Y_view, observed)
    if cfg.use_metadata and imp.meta_dim == 0 and metadata is not None and any(metadata):
        warnings.warn("metadata given to fit() but the imputer was built without a metadata projection; ignored")
    pretrain_vae(imp, Y_view, observed, [])
    trainer = Trainer(imp, Y_view, observed, metadata)
    for _ in range(trainer.n_epochs):
        trainer.epoch()
    trainer.use_ema()
    imp.to("cpu")
    return imp
