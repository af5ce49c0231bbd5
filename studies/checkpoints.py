"""Which checkpoint a retried or resumed trial restarts from.

Tune hands a trial its newest checkpoint, and retries a failed trial from that same checkpoint
every time: a checkpoint that is corrupt (a truncated copy on shared storage, a flipped byte, a
node killed while syncing) would fail every retry the same way until `max_failures` runs out. So
each candidate is verified first (the SHA-256 manifest of its model state, its JSON files), and
the trial restarts from the newest whole one: the latest, else the ones Tune kept before it
(CheckpointConfig keeps two), else from scratch. The choice is reported with the trial's next
result (`checkpoint_fallback`), which the driver writes to MLflow as a tag.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from depmicro.core.errors import DepmicroError
from depmicro.core.io.manifest import read_bundle

FINAL_FILE = "final.json"
TRIAL_FILE = "trial.json"
_INDEX = re.compile(r"checkpoint_(\d+)$")


def checkpoint_problem(root: Path) -> str | None:
    """None when the checkpoint directory can be restored from, else why not (one line)."""
    root = Path(root)
    try:
        if (root / FINAL_FILE).is_file():
            final = json.loads((root / FINAL_FILE).read_bytes())
            if not isinstance(final, dict) or not isinstance(final.get("metrics"), dict):
                return f"{FINAL_FILE} has no metrics"
            read_bundle(root / "best_model")
            return None
        info = json.loads((root / TRIAL_FILE).read_bytes())
        if not isinstance(info, dict) or not isinstance(info.get("best"), dict):
            return f"{TRIAL_FILE} is damaged"
        float(info["elapsed"])
        read_bundle(root / "state")
        meta = json.loads((root / "state" / "train_state.json").read_bytes())
        int(meta["epoch"])
        return None
    except FileNotFoundError as exc:
        return f"{Path(exc.filename or '?').name} is missing"
    except DepmicroError as exc:
        return str(exc).replace(str(root) + "/", "").replace(str(root), "checkpoint")
    except (ValueError, KeyError, TypeError, OSError) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"


def _older(latest: Path) -> list[Path]:
    """The checkpoints Tune kept before `latest` in the same trial directory, newest first."""
    m = _INDEX.search(latest.name)
    if m is None or not latest.parent.is_dir():
        return []
    n = int(m.group(1))
    older = [(int(x.group(1)), p) for p in latest.parent.iterdir() if (x := _INDEX.search(p.name)) and int(x.group(1)) < n]
    return [p for _, p in sorted(older, reverse=True)]


def restore_point(ckpt) -> tuple[str | None, str | None]:
    """(a local copy of the newest whole checkpoint or None, a note when that is not the latest).

    `ckpt` is what tune.get_checkpoint() returned; the caller removes the returned directory."""
    latest = Path(ckpt.path)
    tried: list[str] = []
    candidates = [("latest", ckpt)] + [(p.name, p) for p in _older(latest)]
    for label, cand in candidates:
        d = tempfile.mkdtemp(prefix="depmicro-restore-")
        try:
            if isinstance(cand, Path):
                shutil.rmtree(d)
                shutil.copytree(cand, d)
            else:
                cand.to_directory(d)
        except Exception as exc:  # a damaged copy on any file system: try the one before
            shutil.rmtree(d, ignore_errors=True)
            tried.append(f"{latest.name if label == 'latest' else label} unreadable ({type(exc).__name__})")
            continue
        problem = checkpoint_problem(Path(d))
        if problem is None:
            if not tried:
                return d, None
            return d, f"{'; '.join(tried)}; resumed from {label}"
        shutil.rmtree(d, ignore_errors=True)
        tried.append(f"{latest.name if label == 'latest' else label} corrupt ({problem})")
    return None, f"{'; '.join(tried)}; restarted from epoch 1"
