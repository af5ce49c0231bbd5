"""Content-addressed store of trained VAE states, so a study pays the VAE phase once per key.

Why: the VAE phase (pretraining on the other sets, fine-tuning on the target's training view) reads
only the fields in VAE_FIELDS, the training view, its observed mask and the pretraining matrices,
while a study searches DAT and sampler settings; every trial with the same key would train the
same VAE again. The key is a SHA-256 over exactly those inputs (plus the torch version, which
can change the numbers), so two splits, two data sets or two VAE settings never share an entry.

One entry is one safetensors file `vae-<key>.safetensors`: the VAE's state dict, and in its
header the key, the phase's losses and a SHA-256 of the tensor bytes. Loading checks the key and
that digest, so a truncated or bit-flipped file is refused (DepmicroError) rather than used;
`read_vae_entry` turns a refused file into a miss, so the caller trains and replaces it. Files
are written to a temp name and renamed (core/io/atomic.py): trials racing on one key each see a
whole file or none. Nothing here unpickles.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch

from depmicro.core.data.evaluation import better, evaluate
from depmicro.core.imputer import keep_observed
from depmicro.core.io.atomic import atomic_path
from depmicro.core.io.content_hash import update_with_matrix
from depmicro.core.errors import DepmicroError
from depmicro.core.model.config import ModelConfig
from depmicro.core.model.vae import TokenVAE, train_vae
from depmicro.core.train.trainer import phase_seed, seed_all

if TYPE_CHECKING:
    from depmicro.core.model.module import DepMicroDiff

# /2: the VAE loss solves each profile's ridge fit once (it solved it twice); the same arithmetic in another order, so
# a /1 entry is not what this code trains bit for bit, and a hit must equal training
FORMAT = "depmicro-vae/2"
# what the VAE phase reads from the config (train_vae_entry below: the VAE init draws from torch.manual_seed(seed),
# then train_vae reads the rest); vae_pretrain enters the key through the pretraining matrices it lets in
VAE_FIELDS = ("latent_dim", "vae_hidden", "vae_beta", "vae_epochs", "vae_lr", "batch_size", "train_mask_ratio", "seed",
              "vae_token_sample", "vae_visible_weight", "vae_readout",
              "vae_factor_rank", "vae_factor_init", "vae_factor_visible_weight", "vae_ema_decay",
              "vae_joint_finetune", "vae_partners", "vae_standardize", "vae_partner_gate")
# fields added after FORMAT 2 shipped, with their defaults: at the default they stay out of the key, so an entry
# trained before the field existed (which trained exactly as the default does) is still a hit
KEYED_WHEN_SET = {"vae_ema_decay": 0.0, "vae_joint_finetune": False, "vae_partners": 0, "vae_standardize": False,
                  "vae_partner_gate": False}


@dataclass
class VaeEntry:
    """A trained VAE state (CPU tensors) and what the phase reported; the unit the cache stores."""

    key: str
    state: dict[str, torch.Tensor]
    losses: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0  # what training it cost when it was computed


def vae_settings(cfg) -> dict:
    return {k: getattr(cfg, k) for k in VAE_FIELDS if not (k in KEYED_WHEN_SET and getattr(cfg, k) == KEYED_WHEN_SET[k])}


def vae_cache_key(cfg, Y_view: np.ndarray, observed: np.ndarray, pretrain: Sequence[np.ndarray] = ()) -> str:
    """sha256 of the VAE settings, the training view (values and NaN pattern), the observed mask and
    the pretraining matrices the phase actually uses (none when cfg.vae_pretrain is off). With none used,
    vae_joint_finetune has nothing to join and trains bit for bit as without it, so it stays out of the key."""
    used = list(pretrain) if cfg.vae_pretrain else []
    settings = vae_settings(cfg)
    if not used:
        settings.pop("vae_joint_finetune", None)
    h = hashlib.sha256()
    h.update(FORMAT.encode())
    h.update(torch.__version__.encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    update_with_matrix(h, Y_view)
    obs = np.ascontiguousarray(observed, dtype=bool)
    h.update(json.dumps(list(obs.shape)).encode() + np.packbits(obs).tobytes())
    h.update(f"pretrain:{len(used)}".encode())
    for P in used:
        update_with_matrix(h, P)
    return h.hexdigest()


def entry_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"vae-{key}.safetensors"


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{list(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_vae_entry(entry: VaeEntry, cache_dir: str | Path) -> Path:
    from safetensors.torch import save_file

    path = entry_path(cache_dir, entry.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in entry.state.items()}
    meta = {"format": FORMAT, "key": entry.key, "sha256": _digest(state), "losses": json.dumps(entry.losses),
            "seconds": repr(float(entry.seconds))}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def load_vae_entry(path: str | Path, key: str | None = None) -> VaeEntry:
    """The entry in `path`; DepmicroError (one line) when it is not a whole, matching cache entry."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise DepmicroError(f"{p}: no such VAE cache entry")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        losses = json.loads(meta.get("losses", "{}"))
        seconds = float(meta.get("seconds", "0"))
    except Exception as exc:  # safetensors raises its own error types for a bad header or a short file
        raise DepmicroError(f"{p}: not a VAE cache entry ({type(exc).__name__})") from None
    if meta.get("format") != FORMAT:
        raise DepmicroError(f"{p}: not a VAE cache entry (format {meta.get('format')!r}, expected {FORMAT!r})")
    if key is not None and meta.get("key") != key:
        raise DepmicroError(f"{p}: VAE cache entry holds key {str(meta.get('key'))[:12]}..., expected {key[:12]}...")
    if meta.get("sha256") != _digest(state):
        raise DepmicroError(f"{p}: VAE cache entry is corrupt (tensor checksum mismatch)")
    return VaeEntry(key=str(meta["key"]), state=state, losses=losses, seconds=seconds)


def read_vae_entry(cache_dir: str | Path, key: str) -> VaeEntry | None:
    """A hit, or None on a miss; a refused (corrupt, foreign) file is a miss, which the caller overwrites."""
    path = entry_path(cache_dir, key)
    if not path.exists():
        return None
    try:
        return load_vae_entry(path, key)
    except DepmicroError as exc:
        warnings.warn(f"{exc}; retraining the VAE and replacing the entry")
        return None


# --- the phase itself -----------------------------------------------------------------------------

def train_vae_entry(cfg: ModelConfig, Y_view: np.ndarray, observed: np.ndarray, pretrain: Sequence[np.ndarray] = (),
                    key: str | None = None) -> VaeEntry:
    """The VAE phase on its own: pretraining on the other sets (leave-target-out), then fine-tuning on
    the target's training view, `cfg.vae_epochs` each, on the CPU. With `vae_joint_finetune` the fine-tuning
    keeps the other sets beside the target's view. Why: the encoder is bound by the target's few hundred rows
    (it remembers their entries: docs/model-log.md section 19), and the other sets go on regularizing it.

    It reseeds every RNG from cfg.seed first and builds its own TokenVAE, so its result is a function
    of the vae_cache_key inputs only (the same init the imputer draws: the VAE is the first module
    built after torch.manual_seed(cfg.seed)); before, its noise continued the torch stream after the
    DAT's initialisation, so the VAE changed with hidden_dim or n_layers, which studies search.
    """
    t0 = time.perf_counter()
    seed_all(cfg.seed)
    vae = TokenVAE.from_config(Y_view.shape[1], cfg)
    others = [(P, np.ones_like(P, dtype=bool)) for P in pretrain] if cfg.vae_pretrain else []
    if vae.standardize:  # over every row the VAE trains on: the target's scale alone put a microbe that is rare there
        # and common in a pretraining set thousands of sds out (stad with coad and hnsc: encoder validation -0.04)
        vae.set_scale(np.concatenate([Y_view, *[P for P, _ in others]]),
                      np.concatenate([observed, *[o for _, o in others]]))
    if cfg.vae_factor_rank and cfg.vae_factor_init == "pca":
        vae.fix_factors_to_pca(vae.inner(Y_view), observed)
    if vae.partner_w is not None:
        vae.set_partners(vae.inner(Y_view), observed)
    rng = np.random.default_rng(cfg.seed)
    cpu = torch.device("cpu")
    losses = {}
    opts = dict(epochs=cfg.vae_epochs, lr=cfg.vae_lr, beta=cfg.vae_beta, batch_size=cfg.batch_size,
                mask_ratio=cfg.train_mask_ratio, rng=rng, device=cpu, token_sample=cfg.vae_token_sample,
                visible_weight=cfg.vae_visible_weight, factor_visible_weight=cfg.vae_factor_visible_weight,
                ema_decay=cfg.vae_ema_decay)
    if others:
        losses["vae_pretrain_loss"] = train_vae(vae, others, **opts)[-1:]
    losses["vae_loss"] = train_vae(vae, [(Y_view, observed), *(others if cfg.vae_joint_finetune else [])], **opts)[-1:]
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


def choose_factor_rank(cfg: ModelConfig, Y: np.ndarray, Y_view: np.ndarray, observed: np.ndarray, val: np.ndarray,
                       pretrain: Sequence[np.ndarray] = (), cache_dir: str | Path | None = None,
                       entries: Mapping[str, VaeEntry] | None = None) -> tuple[ModelConfig, dict[str, VaeEntry], dict[int, float], float]:
    """cfg.vae_factor_rank against cfg.vae_factor_rank_alt: the VAE phase at each rank (cached like any other), each
    encoder alone scored on the validation entries `val` of `Y` by cfg.val_metric. Returns the config at the better rank
    (alt 0: what was trained), the entries to hand to `pretrain_vae` so the winner is not trained twice, the scores,
    and the seconds spent training VAEs here (0 when both were hits).

    Why the encoder and not the whole model: the learned factors vary more between sets and splits than between ranks
    (docs/model-log.md sections 12-13), and two whole fits cost twice the DAT phase; on the stop-16/17 fits the encoder's
    validation picked the same rank as the whole model's in all six stad/hnsc pairs. A tie keeps vae_factor_rank."""
    ranks = [cfg.vae_factor_rank, cfg.vae_factor_rank_alt]
    found = dict(entries or {})
    scores: dict[int, float] = {}
    best, trained = ranks[0], 0.0
    for r in ranks:
        c = replace(cfg, vae_factor_rank=r, vae_factor_rank_alt=0)
        entry, source = cached_vae_entry(c, Y_view, observed, pretrain, cache_dir=cache_dir, entries=found)
        found[entry.key] = entry
        trained += entry.seconds if source == "trained" else 0.0
        vae = TokenVAE.from_config(Y_view.shape[1], c)
        vae.load_state_dict(entry.state)
        vae.eval()
        filled = keep_observed(Y_view, observed, vae.estimate(Y_view, observed))
        scores[r] = float(evaluate(Y, filled, val)[cfg.val_metric])
        if r != ranks[0] and better(cfg.val_metric, scores[r], scores[best]):
            best = r
    return replace(cfg, vae_factor_rank=best, vae_factor_rank_alt=0), found, scores, trained


def pretrain_vae(imp: DepMicroDiff, Y_view: np.ndarray, observed: np.ndarray, pretrain: Sequence[np.ndarray],
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
    seed_all(phase_seed(cfg.seed, "dat"))
    return {**entry.losses, "source": source, "seconds": entry.seconds if source == "trained" else 0.0}
