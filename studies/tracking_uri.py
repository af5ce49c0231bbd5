"""Tracking URIs, checked before MLflow sees them, and SQLite stores made safe to share.

Ray- and MLflow-free, so `depmicro.analysis` and `depmicro.studies` use the same rules.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import urlparse

from depmicro.core.errors import DepmicroError
from depmicro.studies.schema import default_tracking_uri, normalize_tracking_uri  # noqa: F401 (one home: schema)

SUPPORTED_SCHEMES = ("sqlite", "http", "https", "file", "databricks", "postgresql", "mysql", "mssql")


def check_tracking_uri(uri: str) -> str:
    """Refuse a URI MLflow cannot use before it is handed to MLflow (which answers a typo with a
    40-line exception), and a SQLite file whose folder does not exist."""
    scheme = urlparse(uri).scheme.split("+")[0]
    if "://" in uri and scheme not in SUPPORTED_SCHEMES:
        raise DepmicroError(f"--tracking-uri {uri}: not a tracking URI MLflow supports "
                            "(use sqlite:///PATH.db, http(s)://HOST:PORT, file:///DIR or a SQL database URI)")
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if db.is_dir():
            raise DepmicroError(f"--tracking-uri {uri}: {db} is a directory, not a database file")
        if not db.parent.is_dir():
            raise DepmicroError(f"--tracking-uri {uri}: folder {db.parent} does not exist")
    return uri


def enable_wal(uri: str) -> bool:
    """Switch a SQLite tracking store to write-ahead logging (persistent, stored in the file).

    Why: in SQLite's default rollback journal a reader blocks the writer and the other way round,
    so `depmicro analyze` (reads, then logs report.html to the parent run) next to a running study
    (the driver writes every epoch) fails with "database is locked". In WAL mode readers never block
    the writer and a writer does not block readers. WAL needs a local file system (it uses shared
    memory), which is where a SQLite store belongs anyway; a server is the answer on a cluster.
    Best effort: returns False when the switch cannot be made now (another connection is writing).
    """
    if not uri.startswith("sqlite:///"):
        return False
    db = Path(uri[len("sqlite:///"):])
    if not db.is_file():
        return False
    try:
        with sqlite3.connect(db, timeout=10) as con:
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        return str(mode).lower() == "wal"
    except sqlite3.Error:
        return False
