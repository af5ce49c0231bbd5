"""Where a command may write: the one check every command runs on its --out (and --plot) before
any slow work starts.

The rules (why: a command must never destroy what it did not create):
- a directory target may replace an existing directory only when that directory is one of the
  command's own kind (its manifest says so) or empty; anything else is refused;
- never the working directory or a folder holding it (`--out .`), never a path that is, holds or
  lies inside one of the command's inputs (`impute --data X --out X`, `--out` inside the model);
- the place the first byte will land must take a write now: a probe file is written, synced and
  removed, so a read-only or full disk fails in one line before minutes of training, not after.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

from depmicro.core.errors import DepmicroError

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "depmicro-bundle/1"
# the kinds of directory depmicro writes (manifest "kind"; a model bundle has none, as it always had)
MODEL_KIND, REPORT_KIND, PLOTS_KIND = "model", "report", "deps-plots"
_PROBE_BYTES = 4096


def dir_kind(d: Path) -> str | None:
    """The kind written in a depmicro directory's manifest ("model" for bundles that predate
    kinds), or None when `d` is not a directory depmicro wrote."""
    m = Path(d) / MANIFEST
    if m.is_symlink() or not m.is_file():
        return None
    try:
        manifest = json.loads(m.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        return None
    kind = manifest.get("kind", "model")
    return kind if isinstance(kind, str) else None


def _inside(a: Path, b: Path) -> bool:
    """a is b or lies under b (both resolved)."""
    return a == b or b in a.parents


def _nearest_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def probe_writable(directory: Path) -> None:
    """Write, sync and remove a small file in `directory`; DepmicroError if the disk refuses."""
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".depmicro-probe-")
    except OSError as exc:
        raise DepmicroError(f"cannot write to {directory} ({exc.strerror or exc})") from None
    try:
        os.write(fd, b"\0" * _PROBE_BYTES)
        os.fsync(fd)
    except OSError as exc:
        raise DepmicroError(f"cannot write to {directory} ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
        try:
            os.unlink(name)
        except OSError:
            pass


def check_output(out: str | os.PathLike, *, flag: str = "--out", directory: str | None = None,
                 inputs: Iterable[str | os.PathLike | None] = (), writes_into: bool = False) -> Path:
    """Check an output target before any work; returns it resolved.

    `directory`: the kind of directory the command writes ("model", "report", "deps-plots"), or None
    for a single file. `writes_into`: files go into the target itself (else beside it, then renamed).
    """
    target = Path(out).expanduser().resolve()
    shown = f"{flag} {out}"
    cwd = Path.cwd().resolve()
    if _inside(cwd, target):
        raise DepmicroError(f"{shown} is the working directory or holds it; give a new directory")
    if directory is not None and target.exists() and not target.is_dir():
        raise DepmicroError(f"{shown} exists and is not a directory")
    for raw in inputs:
        if raw is None:
            continue
        inp = Path(raw).expanduser().resolve()
        if target == inp:
            raise DepmicroError(f"{shown} is also an input ({raw}); write to another path")
        if _inside(inp, target):
            raise DepmicroError(f"{shown} holds the input {raw}; write to another path")
        if inp.is_dir() and _inside(target, inp):
            raise DepmicroError(f"{shown} lies inside the input {raw}; write to another path")
    if target.exists() or target.is_symlink():
        if directory is None:
            if target.is_dir():
                raise DepmicroError(f"{shown} is a directory, expected a file path")
        else:
            if not target.is_dir():
                raise DepmicroError(f"{shown} exists and is not a directory")
            kind = dir_kind(target)
            if kind != directory and any(target.iterdir()):
                what = f"a depmicro {kind} directory" if kind else "not a depmicro directory"
                raise DepmicroError(f"{shown} exists and is {what}, not a {directory} one; "
                                    "refusing to replace it (give a new or empty directory)")
    parent = target.parent
    if directory is None and not parent.is_dir():
        raise DepmicroError(f"{shown}: folder {parent} does not exist")
    probe_writable(_nearest_existing(target if writes_into and target.is_dir() else parent))
    return target
