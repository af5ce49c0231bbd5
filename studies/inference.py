"""Inference settings scored on one trained checkpoint: the `inference:` grid of a study file.

Sampling knobs (sampling, sampling_fraction, sampler_eta, n_impute_samples, infer_ar_steps) change
nothing in training, so a study trains each configuration once and scores every setting of the
grid on the trial's best-validation model, instead of paying a full trial per value. The epochs
themselves validate with the declared `default` setting: that is the one number ASHA and the
search see per trial and epoch.

Per setting, a trial logs MLflow metrics named `inference/<label>/<name>` (label: `knob-value`
pieces joined by `/`, e.g. `inference/sampling_fraction-5/sampler_eta-0.0/val_pcc_per_microbe`;
MLflow metric names take neither `=` nor `,`) and an `inference.json` table. Everything here is
plain Python (no Ray, no MLflow), so status, analysis and export read the same names.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

from depmicro.core.data.evaluation import METRICS, better
from depmicro.core.errors import DepmicroError
from depmicro.core.model.config import ModelConfig, config_from_dict

PREFIX = "inference/"
ARTIFACT = "inference.json"
BASE_KNOBS = ("sampling", "sampling_fraction", "sampler_eta", "n_impute_samples", "infer_ar_steps")
SCORES = (*(f"val_{m}" for m in METRICS), *(f"test_{m}" for m in METRICS), "seconds")


def knobs() -> tuple[str, ...]:
    """The inference-only ModelConfig fields."""
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    return tuple(k for k in (*BASE_KNOBS, "estimate") if k in names)


@dataclass(frozen=True)
class InferenceSpec:
    """The grid (knob -> values, typed like the ModelConfig field) and the setting epochs validate with."""

    grid: dict[str, tuple]
    default: dict[str, Any]

    def settings(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.grid[k] for k in keys))]

    def to_dict(self) -> dict:
        return {"grid": {k: list(v) for k, v in self.grid.items()}, "default": dict(self.default)}


def inference_from_json(d: dict | None) -> InferenceSpec | None:
    if not d:
        return None
    return InferenceSpec(grid={k: tuple(v) for k, v in d["grid"].items()}, default=dict(d["default"]))


def label(setting: dict[str, Any]) -> str:
    return "/".join(f"{k}-{_text(v)}" for k, v in setting.items())


def metric_key(setting_label: str, name: str) -> str:
    return f"{PREFIX}{setting_label}/{name}"


def _text(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def parse_label(text: str) -> dict[str, Any]:
    """`sampling_fraction-5/sampler_eta-0.0` -> {"sampling_fraction": 5, "sampler_eta": 0.0}."""
    out: dict[str, Any] = {}
    for piece in text.split("/"):
        k, _, v = piece.partition("-")
        out[k] = _value(v)
    return out


def _value(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def trial_settings(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """A run's `inference/...` metrics regrouped: label -> {score name: value}."""
    out: dict[str, dict[str, float]] = {}
    for key, v in metrics.items():
        if not isinstance(key, str) or not key.startswith(PREFIX):
            continue
        lab, _, name = key[len(PREFIX):].rpartition("/")
        if lab and name:
            out.setdefault(lab, {})[name] = v
    return out


def best_setting(metrics: dict[str, float], val_metric: str) -> dict | None:
    """The trial's best setting by validation (`val_metric`: a METRICS name), or None without a grid."""
    best = None
    for lab, scores in trial_settings(metrics).items():
        v = scores.get(f"val_{val_metric}")
        if v is None or v != v:
            continue
        if best is None or better(val_metric, v, best["value"]):
            best = {"label": lab, "setting": parse_label(lab), "value": float(v), "metric": f"val_{val_metric}",
                    **{k: scores[k] for k in (f"test_{val_metric}", "seconds") if k in scores}}
    return best


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool = True) -> list[bool]:
    """Which (quality, seconds) points no other point beats on both (ties on both keep the first)."""
    sign = 1.0 if higher_is_better else -1.0
    flags = []
    for i, (q, s) in enumerate(points):
        dominated = False
        for j, (q2, s2) in enumerate(points):
            if j == i:
                continue
            no_worse = sign * q2 >= sign * q and s2 <= s
            strictly = sign * q2 > sign * q or s2 < s
            if no_worse and (strictly or j < i):
                dominated = True
                break
        flags.append(not dominated)
    return flags


# --- study-file validation ---------------------------------------------------------------------

def parse_inference(v: Any, base_config: dict, taken: set[str]) -> InferenceSpec | None:
    """`inference:` -> InferenceSpec. Values are typed through ModelConfig, so 1 and 1.0 are one setting."""
    if v is None:
        return None
    if not isinstance(v, dict) or not v:
        raise DepmicroError(f"inference must be a mapping of inference knob -> list of values (knobs: {', '.join(knobs())})")
    v = dict(v)
    default = v.pop("default", None)
    grid: dict[str, tuple] = {}
    for key, vals in v.items():
        what = f"inference.{key}"
        if key not in knobs():
            raise DepmicroError(f"{what}: not an inference knob (knobs: {', '.join(knobs())}; training fields go in search_space)")
        if key in taken:
            raise DepmicroError(f"{what}: also in search_space or ablate; an inference knob is scored per checkpoint, pick one")
        if not isinstance(vals, list):
            vals = [vals]
        if not vals or any(isinstance(x, (dict, list)) for x in vals):
            raise DepmicroError(f"{what} must be a non-empty list of plain values")
        typed = []
        for x in vals:
            try:
                typed.append(getattr(config_from_dict({**base_config, key: x}), key))
            except DepmicroError as exc:
                raise DepmicroError(f"{what} value {x!r}: {exc}") from None
        if len(set(typed)) != len(typed):
            raise DepmicroError(f"{what} has a duplicate value: {list(vals)}")
        grid[key] = tuple(typed)
    if not grid:
        raise DepmicroError("inference needs at least one knob with values besides 'default'")
    if default is None:
        chosen = {k: vals[0] for k, vals in grid.items()}
    else:
        if not isinstance(default, dict):
            raise DepmicroError(f"inference.default must be a mapping knob -> value, not {default!r}")
        extra = sorted(set(default) - set(grid))
        if extra:
            raise DepmicroError(f"inference.default.{extra[0]}: not in the inference grid")
        chosen = {}
        for k, vals in grid.items():
            if k not in default:
                chosen[k] = vals[0]
                continue
            try:
                x = getattr(config_from_dict({**base_config, k: default[k]}), k)
            except DepmicroError as exc:
                raise DepmicroError(f"inference.default.{k}: {exc}") from None
            if x not in vals:
                raise DepmicroError(f"inference.default.{k}: {default[k]!r} is not one of the grid's values {list(vals)}")
            chosen[k] = x
    spec = InferenceSpec(grid=grid, default=chosen)
    for s in spec.settings():
        try:
            config_from_dict({**base_config, **s})
        except DepmicroError as exc:
            raise DepmicroError(f"inference setting {label(s)}: {exc}") from None
    return spec
