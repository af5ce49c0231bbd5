"""A real MLflow tracking server for tests: `cluster/mlflow/start-server.sh` on 127.0.0.1 with a
PostgreSQL backend store (a fresh database per test in the cluster that DEPMICRO_TEST_PG_DSN names;
.ci/postgres.sh starts a throwaway one) and a local artifact root the server proxies.

Where no PostgreSQL is reachable the fixtures skip, saying why; the server runs in its own session
so the test removes it, with every worker it forked, by process group."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.helpers import REPO

DSN_VAR = "DEPMICRO_TEST_PG_DSN"
UNAVAILABLE_VAR = "DEPMICRO_TEST_PG_UNAVAILABLE"  # .ci/postgres.sh's reason when it could not start one
SCRIPT = REPO / "cluster" / "mlflow" / "start-server.sh"


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _redact(dsn: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"***@{host}" if "@" in parts.netloc else host))


def pg_dsn_or_skip() -> str:
    """The DSN of a PostgreSQL that answers, else pytest.skip with the reason."""
    dsn = os.environ.get(DSN_VAR)
    if not dsn:
        why = os.environ.get(UNAVAILABLE_VAR) or f"{DSN_VAR} is not set"
        pytest.skip(f"no PostgreSQL for the MLflow server test: {why} (.ci/run starts one with .ci/postgres.sh)")
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[cluster]'")
    try:
        with psycopg.connect(dsn, connect_timeout=10):
            pass
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        pytest.skip(f"PostgreSQL at {_redact(dsn)} is not reachable: {first}")
    return dsn


def create_database(dsn: str) -> tuple[str, str]:
    """A fresh database next to the one `dsn` names: (its DSN, its name)."""
    import psycopg

    name = f"depmicro_test_{secrets.token_hex(6)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return _with_database(dsn, name), name


def drop_database(dsn: str, name: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def query(dsn: str, sql: str, *args) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


@dataclass
class MlflowServer:
    uri: str               # http://127.0.0.1:PORT
    backend_dsn: str       # the PostgreSQL database behind it
    artifacts: Path        # --artifacts-destination
    log: Path
    proc: subprocess.Popen

    def wait_ready(self, timeout: float = 300) -> float:
        """Seconds until /health answers (the script first creates the schema: `mlflow db upgrade`)."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"start-server.sh exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as r:
                    if r.status == 200:
                        return time.time() - t0
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"MLflow server not up in {timeout}s:\n{self.log.read_text()[-3000:]}")


def start_server(backend_dsn: str, directory: Path, port: int) -> MlflowServer:
    """Start cluster/mlflow/start-server.sh (not waiting for it: the caller overlaps other set-up)."""
    artifacts = directory / "server-artifacts"
    log = directory / "mlflow-server.log"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # this venv's mlflow
        "MLFLOW_BACKEND_URI": backend_dsn, "MLFLOW_ARTIFACTS": str(artifacts),
        "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1",
        # the GenAI job runner (six queue consumers) has no part in tracking; spare the small machine
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    env.pop("MLFLOW_HOST", None)  # the script's default must be loopback
    with open(log, "w") as f:
        proc = subprocess.Popen(["bash", str(SCRIPT)], cwd=directory, stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    return MlflowServer(f"http://127.0.0.1:{port}", backend_dsn, artifacts, log, proc)
