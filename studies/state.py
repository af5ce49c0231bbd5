"""A study's state on disk: `<storage>/<name>/depmicro_study.json`, written by its driver and read by
`study status` and `study resume`, and the lock `<storage>/.<name>.lock` its driver holds.

Why a module of its own: the state is hand-editable and resume acts on it, so it is checked field by
field; the `study` commands' checks (studies/cli.py) read it before Ray, MLflow and torch load, so a
damaged or misnamed state is refused in a fraction of a second.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from pathlib import Path

from depmicro.core.errors import DepmicroError
from depmicro.core.io.atomic import atomic_write_text
from depmicro.studies import provenance
from depmicro.studies.schema import normalize_tracking_uri
from depmicro.studies.spec import check_name, spec_from_state

STATE_FILE = "depmicro_study.json"
DEFAULT_STORAGE = "depmicro_results"


def default_storage() -> Path:
    return Path(DEFAULT_STORAGE).resolve()


def storage_root(storage: str | os.PathLike | None) -> Path:
    if storage and "://" in str(storage):
        raise DepmicroError(f"--storage {storage}: cloud URIs are not supported yet; use a directory "
                            "(on a cluster: a shared file system mounted at the same path on every node)")
    return Path(storage).resolve() if storage else default_storage()


def experiment_dir(name: str, storage: str | os.PathLike | None) -> Path:
    """`<storage>/<name>`; a name that is not a plain study name (`..`, a separator) never becomes a
    path: status and resume would otherwise read (and resume unpickle) outside the storage folder."""
    return storage_root(storage) / check_name(name)


def write_state(exp: Path, state: dict) -> None:
    exp.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in state.items() if k != "spec_obj"}  # read_state's parsed spec is not stored
    atomic_write_text(exp / STATE_FILE, json.dumps(state, indent=2))


def read_state(exp: Path) -> dict:
    """The study state file, checked field by field: it is hand-editable, and resume acts on it."""
    p = exp / STATE_FILE
    if not p.is_file():
        raise DepmicroError(f"no study at {exp} (no {STATE_FILE}); check the name and --storage")
    try:
        state = json.loads(p.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DepmicroError(f"{p}: unreadable study state (not JSON)") from None
    except OSError as exc:
        raise DepmicroError(f"{p}: cannot read the study state ({exc.strerror})") from None
    if not isinstance(state, dict):
        raise DepmicroError(f"{p}: damaged study state (not a JSON object)")
    for key in ("tracking_uri", "experiment_id", "parent_run_id"):
        if not isinstance(state.get(key), str) or not state[key]:
            raise DepmicroError(f"{p}: damaged study state ({key!r} missing or not text)")
    try:
        spec = spec_from_state(state.get("spec"))
    except DepmicroError as exc:
        raise DepmicroError(f"{p}: damaged study state ({exc})") from None
    if spec.name != exp.name:
        raise DepmicroError(f"{p}: damaged study state (it describes study {spec.name!r}, not {exp.name!r})")
    state["spec_obj"] = spec
    return state


@contextlib.contextmanager
def study_lock(storage: Path, name: str):
    """One driver per study: an exclusive flock on `<storage>/.<name>.lock`, held while it runs.

    The kernel drops an flock when its holder exits or is killed, so a lock file a crashed driver
    left behind is not stale: the next driver simply takes it (the file keeps only the last holder's
    pid and host, for the message). A file system without locks (ENOLCK/EOPNOTSUPP) runs unlocked.
    """
    storage.mkdir(parents=True, exist_ok=True)
    path = storage / f".{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise _running(fd, name, path) from None
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"driver pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the flock


def _running(fd: int, name: str, path: Path) -> DepmicroError:
    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
    return DepmicroError(f"study {name!r} is already being run by {holder} (lock {path}); wait for it, or stop that driver first")


def refuse_if_running(storage: Path, name: str) -> None:
    """Refuse now, before Ray and torch load, when a driver holds the study's lock. Only a fast answer:
    it creates and writes nothing, and the driver still takes the lock itself (study_lock) before it acts.
    The shared lock it holds for a moment would refuse a driver starting in that same moment, which is
    then told to wait for a driver that is not there: a race of microseconds, left as it is."""
    path = storage / f".{name}.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file, or none readable: study_lock decides
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise _running(fd, name, path) from None
    finally:
        os.close(fd)  # releases the shared lock, if it was taken


def check_resumable(name: str, state: dict, tracking_uri: str | None, allow_changed_data: bool) -> dict[str, tuple[str, str]]:
    """Refuse to resume a study elsewhere than where it is tracked, or on changed data unless allowed; returns the
    changed data files (provenance.check_resume)."""
    if tracking_uri and normalize_tracking_uri(tracking_uri) != state["tracking_uri"]:
        raise DepmicroError(f"study {name!r} is tracked at {state['tracking_uri']}; resume it there (got {tracking_uri})")
    return provenance.check_resume(name, state, state["spec_obj"], allow_changed_data)
