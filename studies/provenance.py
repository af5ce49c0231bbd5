"""What a study's results depend on besides its file: the data files' bytes, the code commit and
the library versions. Recorded when a study starts; `study resume` compares the data again, because
trials finished on old data and trials run on new data would be one study in name only.
"""
from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path

from depmicro.core.errors import DepmicroError
from depmicro.core.io.manifest import sha256_file
from depmicro.studies.spec import SYNTHETIC, StudySpec

LIBRARIES = ("torch", "ray", "optuna", "mlflow")


def data_files(spec: StudySpec) -> list[str]:
    """Every file a study reads data from (targets, metadata, pretraining sets); synthetic sets have none."""
    out: list[str] = []
    for d in spec.datasets:
        out += [p for p in (d.path, d.metadata, *d.pretrain) if p and p != SYNTHETIC]
    return list(dict.fromkeys(out))


def data_hashes(spec: StudySpec) -> dict[str, str]:
    hashes = {}
    for p in data_files(spec):
        try:
            hashes[p] = sha256_file(Path(p))
        except OSError as exc:
            hashes[p] = f"unreadable ({exc.strerror or type(exc).__name__})"
    return hashes


def versions() -> dict[str, str]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = "absent"
    return out


def record(spec: StudySpec, commit: str) -> dict:
    return {"data": data_hashes(spec), "git_commit": commit, "versions": versions(), "recorded": time.time()}


def changed_data(recorded: dict, spec: StudySpec) -> dict[str, tuple[str, str]]:
    """path -> (recorded hash, current hash) for every data file that differs now."""
    now = data_hashes(spec)
    old = recorded.get("data", {})
    return {p: (old.get(p, "absent"), now.get(p, "absent")) for p in sorted(set(old) | set(now)) if old.get(p) != now.get(p)}


def check_resume(name: str, state: dict, spec: StudySpec, allow_changed: bool) -> dict[str, tuple[str, str]]:
    """Refuse (one line) to resume a study whose data changed, unless allowed; returns the changes."""
    recorded = state.get("provenance")
    if not recorded:  # a study started before provenance was recorded: nothing to compare with
        return {}
    changed = changed_data(recorded, spec)
    if changed and not allow_changed:
        path, (old, new) = next(iter(changed.items()))
        more = f" and {len(changed) - 1} more file(s)" if len(changed) > 1 else ""
        raise DepmicroError(f"study {name!r}: data file {path} changed since the study started (sha256 {old[:12]} -> "
                            f"{new[:12]}){more}; pass --allow-changed-data to resume it anyway (recorded in MLflow)")
    return changed
