"""The DAT training loop: one epoch at a time through accelerate.Accelerator, and the resumable
state (optimizer, RNG, best-so-far) that a training checkpoint adds to a model bundle."""
from __future__ import annotations

import hashlib
import io
import json
import math
import random
import sys
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from depmicro.core.diffusion.loss import epsilon_loss
from depmicro.core.errors import DepmicroError
from depmicro.core.io.manifest import MANIFEST, read_bundle, read_member
from depmicro.core.model.bundle import manifested_dir, write_model_files
from depmicro.core.model.config import ModelConfig
from depmicro.core.model.module import INFER_BATCH, DepMicroDiff, LatentStats
from depmicro.core.model.memory import plan_rows

@dataclass
class EpochReport:
    epoch: int  # 1-based
    train_loss: float
    val: dict[str, float]
    seconds: float
    _saver: Callable[[Path], None] | None = field(default=None, repr=False, compare=False)
    # the live model after this epoch (eval mode; not the best-so-far), for hooks that evaluate more than
    # validation metrics (tests/bench/dat_epochs.py). Read it, do not keep or train it.
    model: DepMicroDiff | None = field(default=None, repr=False, compare=False)
    total_epochs: int = 0  # epochs the run is planned to last (cfg.epochs, or what cfg.train_steps needs)
    # `with report.ema_weights():` puts the EMA weights (what validation scores and bundles hold) into `model`
    ema_weights: Callable[[], AbstractContextManager] | None = field(default=None, repr=False, compare=False)

    def save_checkpoint(self, directory: str | Path) -> None:
        """Full resumable state (model, optimizer, epoch, RNG, best-so-far) that is also a loadable model."""
        if self._saver is None:
            raise DepmicroError("this epoch report carries no training state to save")
        self._saver(Path(directory))


OnEpoch = Callable[[EpochReport], "bool | None"]


def seed_all(seed: int) -> None:
    from accelerate.utils import set_seed

    set_seed(seed)
    random.seed(seed)


def accelerator_for(cfg: ModelConfig):
    from accelerate import Accelerator

    gpu = torch.cuda.is_available()
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if gpu and torch.cuda.is_bf16_supported() else "no"
    if mp == "bf16" and not gpu:
        mp = "no"  # bf16 autocast on CPU is slow and not what the paper ran; GPU only
    return Accelerator(mixed_precision=mp, cpu=not gpu)


def phase_seed(seed: int, phase: str) -> int:
    """A seed for one training phase derived from cfg.seed; hashed, so it never equals seed + replicate."""
    return int.from_bytes(hashlib.sha256(f"depmicro:{seed}:{phase}".encode()).digest()[:4], "little")


def epoch_batches(n_rows: int, batch_size: int) -> int:
    """Optimizer steps in one epoch: a short last batch (< max(2, batch_size // 4) rows) joins the one before."""
    n = max(1, math.ceil(n_rows / batch_size))
    last = n_rows - (n - 1) * batch_size
    return n - 1 if n > 1 and last < max(2, batch_size // 4) else n


def planned_epochs(cfg: ModelConfig, n_rows: int) -> int:
    """Epochs a run lasts: cfg.epochs, or enough to reach cfg.train_steps (the last one cut short)."""
    return cfg.epochs if cfg.train_steps <= 0 else math.ceil(cfg.train_steps / epoch_batches(n_rows, cfg.batch_size))


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of cfg.lr before optimizer step `step` (0-based): linear warm-up, then constant or cosine to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine" and total > warmup:
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))
    return 1.0


class Trainer:
    """One DAT training run; holds what a checkpoint must capture.

    With cfg.ema_decay > 0 it keeps an exponential moving average of the DAT weights (DiT-style;
    the decay ramps up as min(decay, (1 + n) / (10 + n)) so that short runs are not dominated by the
    initial weights). Validation, saved bundles and the final model use the EMA weights (`ema_swapped`);
    the raw weights live only in the training checkpoint.
    """

    def __init__(self, imp: DepMicroDiff, Y_view: np.ndarray, observed: np.ndarray, metadata):
        cfg = imp.cfg
        self.imp, self.cfg = imp, cfg
        self.acc = accelerator_for(cfg)
        imp.to(self.acc.device)
        self.Y = np.where(observed, np.nan_to_num(Y_view), 0.0).astype(np.float32)
        self.obs = observed
        meta, has = imp.meta_vectors(metadata, len(Y_view))
        self.meta, self.has = meta, has
        params = [p for p in imp.dat.parameters()]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.dat, self.opt = self.acc.prepare(imp.dat, self.opt)
        self.rng = np.random.default_rng(cfg.seed + 1)
        self.n_epochs = planned_epochs(cfg, len(self.Y))
        self.total_steps = cfg.train_steps if cfg.train_steps > 0 else cfg.epochs * epoch_batches(len(self.Y), cfg.batch_size)
        self.step = 0
        self.ema = [p.detach().clone() for p in imp.dat.parameters()] if cfg.ema_decay > 0 else None
        # batch_size / INFER_BATCH unless cfg.max_memory caps them; planned before training allocates
        self.micro, imp.infer_rows = plan_rows(cfg, Y_view, observed, INFER_BATCH)

    def _set_lr(self) -> None:
        f = lr_factor(self.step, self.total_steps, self.cfg.warmup_steps, self.cfg.lr_schedule)
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.lr * f

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        d = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(self.ema, [p.detach() for p in self.imp.dat.parameters()], 1.0 - d)

    @contextmanager
    def ema_swapped(self):
        """Inside: the DAT holds the EMA weights (for validation, saving, the final model); raw ones after."""
        if self.ema is None:
            yield
            return
        params = list(self.imp.dat.parameters())
        raw = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, self.ema):
                p.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(params, raw):
                    p.copy_(r)

    def use_ema(self) -> None:
        """Put the EMA weights into the DAT for good (end of training)."""
        if self.ema is not None:
            with torch.no_grad():
                for p, e in zip(self.imp.dat.parameters(), self.ema):
                    p.copy_(e)

    def epoch(self, progress: bool = False) -> float:
        imp, cfg, dev = self.imp, self.cfg, self.acc.device
        imp.net.train()
        imp.vae.eval()
        perm = self.rng.permutation(len(self.Y))
        batches = [perm[i : i + cfg.batch_size] for i in range(0, len(perm), cfg.batch_size)]
        if len(batches) > 1 and len(batches[-1]) < max(2, cfg.batch_size // 4):
            batches[-2] = np.concatenate([batches[-2], batches.pop()])
        if cfg.train_steps > 0:
            batches = batches[: max(0, cfg.train_steps - self.step)]
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, leave=False, desc="batches", file=sys.stderr)
        total, n = 0.0, 0
        for idx in batches:
            self._set_lr()
            self.opt.zero_grad(set_to_none=True)
            for i in range(0, len(idx), self.micro):  # gradient accumulation: one optimizer step per batch
                part = idx[i : i + self.micro]
                y = torch.as_tensor(self.Y[part], device=dev)
                m = torch.as_tensor(self.obs[part], device=dev)
                meta = None if self.meta is None else torch.as_tensor(self.meta[part], device=dev)
                has = torch.as_tensor(self.has[part], device=dev)
                with self.acc.autocast():
                    loss = epsilon_loss(imp, y, m, meta, has, self.rng)
                # weighted by rows (the loss is a mean over the part's target tokens; equal in expectation)
                self.acc.backward(loss * (len(part) / len(idx)) if len(part) < len(idx) else loss)
                total += loss.item() * len(part)
                n += len(part)
            if cfg.grad_clip > 0:
                self.acc.clip_grad_norm_(imp.dat.parameters(), cfg.grad_clip)
            self.opt.step()
            self.step += 1
            self._update_ema()
        imp.net.eval()
        return total / max(n, 1)

    # resumable state (everything the model bundle does not hold)
    def state(self, epoch: int, best: dict, history: list[dict], stale: int) -> tuple[dict, dict]:
        tensors = {"optimizer": self.opt.state_dict(), "torch_rng": torch.get_rng_state(),
                   "best_state": best.get("state") or {},
                   "dat_raw": {k: v.detach().cpu().clone() for k, v in self.imp.dat.state_dict().items()}}
        meta = {"epoch": epoch, "step": self.step, "np_rng": self.rng.bit_generator.state, "history": history, "stale": stale,
                "best_score": best.get("score"), "best_epoch": best.get("epoch"), "best_val": best.get("val"),
                "py_rng": None}
        return tensors, meta

    def restore(self, directory: Path) -> tuple[int, dict, list[dict], int]:
        """Continue from a checkpoint; every file is read once, verified against the manifest, and
        loaded from the bytes that were hashed (nothing can change between the check and the use)."""
        from safetensors.torch import load as load_safetensors

        d = Path(directory)
        if not (d / "train_state.json").is_file() or not (d / "train_state.pt").is_file():
            raise DepmicroError(f"{d}: not a training checkpoint (train_state.json / train_state.pt missing)")
        files = read_bundle(d) if (d / MANIFEST).exists() else {
            n: read_member(d, n) for n in ("train_state.json", "train_state.pt", "model.safetensors", "normalization.json")}
        meta = json.loads(files["train_state.json"])
        tensors = torch.load(io.BytesIO(files["train_state.pt"]), weights_only=True, map_location="cpu")
        self.imp.net.load_state_dict(load_safetensors(files["model.safetensors"]))
        norm = json.loads(files["normalization.json"])
        self.imp.latent_stats = LatentStats.from_json(norm)
        if self.ema is not None:  # model.safetensors holds the EMA weights; the raw ones are in train_state.pt
            self.ema = [p.detach().clone() for p in self.imp.dat.parameters()]
        if tensors.get("dat_raw"):
            self.imp.dat.load_state_dict(tensors["dat_raw"])
        self.step = int(meta.get("step", 0))
        self.opt.load_state_dict(tensors["optimizer"])
        torch.set_rng_state(tensors["torch_rng"])
        self.rng.bit_generator.state = meta["np_rng"]
        best = {"score": meta["best_score"], "epoch": meta["best_epoch"], "val": meta["best_val"],
                "state": tensors["best_state"] or None}
        return int(meta["epoch"]), best, meta["history"], int(meta["stale"])


def save_checkpoint(trainer: Trainer, directory: Path, epoch: int, best: dict, history: list[dict], stale: int) -> None:
    tensors, meta = trainer.state(epoch, best, history, stale)

    def fill(d: Path) -> None:
        with trainer.ema_swapped():  # the loadable model is the EMA one; raw weights are in train_state.pt
            write_model_files(trainer.imp, d)
        torch.save(tensors, d / "train_state.pt")
        (d / "train_state.json").write_text(json.dumps(meta))

    manifested_dir(directory, fill)
