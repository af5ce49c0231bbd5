"""SHA-256 manifests for model bundles: a bundle is loaded only if every file matches, so a
truncated copy or a tampered weight file is refused before anything is read from it.

A bundle is untrusted input (it arrives by download, copy or MLflow artifact). So a manifest entry
must be a plain relative name of a regular file inside the bundle: no absolute path, no `..`, no
symlink anywhere on the way (a symlinked entry would make the manifest an oracle for files outside
the bundle, and let a bundle load weights from anywhere). Each file is read once: the bytes that
are hashed are the bytes the caller loads (`read_bundle`), so nothing can change between the check
and the use.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from pathlib import Path

from depmicro.core.io.atomic import atomic_write_text
from depmicro.core.errors import DepmicroError

MANIFEST = "manifest.json"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_MANIFEST_BYTES = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(bundle: Path, kind: str | None = None) -> dict:
    """Hash every file under `bundle` (except the manifest itself) into manifest.json. `kind` names
    what depmicro wrote ("report", "deps-plots"; none for a model bundle, as before), so a command
    can tell a directory of its own kind, which it may replace, from anything else."""
    bundle = Path(bundle)
    files = {
        p.relative_to(bundle).as_posix(): sha256_file(p)
        for p in sorted(bundle.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"format": "depmicro-bundle/1", "algorithm": "sha256", "files": files}
    if kind is not None:
        manifest["kind"] = kind
    atomic_write_text(bundle / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def _check_name(bundle: Path, rel: object) -> str:
    """A manifest entry: a relative POSIX name whose parts are plain names (no '', '.', '..')."""
    if not isinstance(rel, str) or not rel:
        raise DepmicroError(f"{bundle}: manifest entry {rel!r} is not a file name")
    parts = rel.split("/")
    if rel.startswith("/") or "\\" in rel or "\x00" in rel or any(x in ("", ".", "..") for x in parts):
        raise DepmicroError(f"{bundle}: manifest entry {rel!r} is not a plain relative name inside the bundle")
    return rel


def read_member(bundle: Path, rel: str, limit: int | None = None) -> bytes:
    """The bytes of regular file `rel` inside `bundle`, refusing symlinks at every level.
    O_NOFOLLOW on the last part and lstat on the directories: no path can leave the bundle."""
    bundle = Path(bundle)
    parts = _check_name(bundle, rel).split("/")
    cur = bundle
    for part in parts[:-1]:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            raise DepmicroError(f"{bundle}: bundle file {rel} is missing") from None
        if not stat.S_ISDIR(st.st_mode):
            raise DepmicroError(f"{bundle}: {rel}: {part} is not a plain directory (symlink or file)")
    try:
        fd = os.open(cur / parts[-1], os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise DepmicroError(f"{bundle}: bundle file {rel} is missing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DepmicroError(f"{bundle}: {rel} is a symlink; a bundle holds regular files only") from None
        raise DepmicroError(f"{bundle}: cannot read {rel} ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DepmicroError(f"{bundle}: {rel} is not a regular file")
        if limit is not None and st.st_size > limit:
            raise DepmicroError(f"{bundle}: {rel} is too large ({st.st_size} bytes)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def _present(bundle: Path) -> tuple[set[str], list[str]]:
    """Every regular file under `bundle` (relative names) and every symlink, without following any."""
    files, links = set(), []
    for root, dirs, names in os.walk(bundle, followlinks=False):
        for n in dirs + names:
            full = Path(root) / n
            rel = full.relative_to(bundle).as_posix()
            if full.is_symlink():
                links.append(rel)
            elif n in names:
                files.add(rel)
    return files, sorted(links)


def read_bundle(bundle: Path) -> dict[str, bytes]:
    """Verify `bundle` against its manifest and return {name: bytes} of every listed file.
    DepmicroError (one line) names the first entry that is unsafe, missing, extra or altered."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise DepmicroError(f"{bundle}: no such model directory")
    if not (bundle / MANIFEST).exists() and not (bundle / MANIFEST).is_symlink():
        raise DepmicroError(f"{bundle}: no {MANIFEST}; not a depmicro bundle")
    raw = read_member(bundle, MANIFEST, limit=_MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DepmicroError(f"{bundle / MANIFEST}: unreadable manifest (not JSON)") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise DepmicroError(f"{bundle / MANIFEST}: unreadable manifest ('files' must map file names to SHA-256 digests)")
    if manifest.get("algorithm", "sha256") != "sha256":
        raise DepmicroError(f"{bundle / MANIFEST}: unsupported algorithm {manifest.get('algorithm')!r} (sha256 only)")
    present, links = _present(bundle)
    if links:
        raise DepmicroError(f"{bundle}: {links[0]} is a symlink; a bundle holds regular files only")
    out: dict[str, bytes] = {}
    for rel, digest in files.items():
        _check_name(bundle, rel)
        if rel == MANIFEST:
            raise DepmicroError(f"{bundle}: the manifest lists itself")
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise DepmicroError(f"{bundle}: manifest digest of {rel} is not a SHA-256 hex string")
        data = read_member(bundle, rel)
        if hashlib.sha256(data).hexdigest() != digest:
            raise DepmicroError(f"{bundle}: {rel} does not match its SHA-256 in the manifest (tampered or corrupted)")
        out[rel] = data
    extra = sorted(present - set(files) - {MANIFEST})
    if extra:
        raise DepmicroError(f"{bundle}: file {extra[0]} is not in the manifest")
    return out


def verify_manifest(bundle: Path) -> dict:
    """Raise DepmicroError naming the first file that is unsafe, missing, extra or altered; returns
    the manifest. Prefer read_bundle where the files are loaded next (one read, no reopen)."""
    files = read_bundle(bundle)
    return {"format": "depmicro-bundle/1", "algorithm": "sha256",
            "files": {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}}
