"""SHA-256 manifests for model bundles: a bundle is loaded only if every file matches, so a
truncated copy or a tampered weight file is refused before anything is read from it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from depmicro.core.io.atomic import atomic_write_text
from depmicro.core.errors import DepmicroError

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(bundle: Path) -> dict:
    """Hash every file under `bundle` (except the manifest itself) into manifest.json."""
    bundle = Path(bundle)
    files = {
        p.relative_to(bundle).as_posix(): sha256_file(p)
        for p in sorted(bundle.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"format": "depmicro-bundle/1", "algorithm": "sha256", "files": files}
    atomic_write_text(bundle / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def verify_manifest(bundle: Path) -> dict:
    """Raise DepmicroError naming the first file that is missing, extra or altered."""
    bundle = Path(bundle)
    mpath = bundle / MANIFEST
    if not mpath.exists():
        raise DepmicroError(f"{bundle}: no {MANIFEST}; not a depmicro bundle")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DepmicroError(f"{mpath}: unreadable manifest") from None
    for rel, digest in files.items():
        p = bundle / rel
        if not p.is_file():
            raise DepmicroError(f"{bundle}: bundle file {rel} listed in the manifest is missing")
        if sha256_file(p) != digest:
            raise DepmicroError(f"{bundle}: {rel} does not match its SHA-256 in the manifest (tampered or corrupted)")
    present = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file() and p.name != MANIFEST}
    extra = sorted(present - set(files))
    if extra:
        raise DepmicroError(f"{bundle}: file {extra[0]} is not in the manifest")
    return manifest
