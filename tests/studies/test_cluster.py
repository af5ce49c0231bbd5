"""A real two-node Ray cluster on this machine (loopback, token authentication), and a study whose
trials land on both nodes, while a node holding the wrong token is refused. Every Ray process is removed at the end, by process group, even on failure
(never `ray stop`: on a shared machine it would stop other people's Ray too)."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import Driver, kill_process_group, small_study, study_args

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([RAY, "start", *args, "--block"], stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def _start_once(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([RAY, "start", *args], stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_started(proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if "Ray runtime started" in log.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"`ray start` exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    raise AssertionError(f"`ray start` not up in {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def two_node_cluster(tmp_path):
    """Head (1 CPU) + a second node (1 CPU) joining with the token file. Yields (address, env)."""
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="dmr-", dir="/tmp")  # short: Ray puts Unix sockets under it
    port = _free_port()
    address = f"127.0.0.1:{port}"
    procs = []
    try:
        head = _start(["--head", f"--port={port}", "--num-cpus=1", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}",
                       "--include-dashboard=false", "--disable-usage-stats"], tmp_path / "head.log", env)
        procs.append(head)
        _wait_started(head, tmp_path / "head.log")
        worker = _start([f"--address={address}", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
                        tmp_path / "worker.log", env)
        procs.append(worker)
        _wait_started(worker, tmp_path / "worker.log")
        yield address, env
    finally:
        for p in reversed(procs):
            kill_process_group(p.pid)
        shutil.rmtree(temp, ignore_errors=True)


def test_study_trials_land_on_both_nodes(two_node_cluster, tmp_path):
    address, env = two_node_cluster
    # two 1-CPU trials at once on two 1-CPU nodes: the scheduler has to use both
    spec = small_study(tmp_path, "twonode", epochs=3, num_samples=2, scheduler="none", baselines=[],
                       max_concurrent_trials=2, synthetic={"n_samples": 600})
    uri, storage = study_args(tmp_path)
    # meanwhile a node with the wrong token tries to join (Ray takes ~20 s to give up; run it alongside)
    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    intruder = _start_once([f"--address={address}", "--num-cpus=1", "--node-ip-address=127.0.0.1"], tmp_path / "intruder.log",
                           {**env, "RAY_AUTH_TOKEN_PATH": str(wrong)})
    drv = Driver(["study", "run", spec, "--address", address, "--tracking-uri", uri, "--storage", storage, "--json"],
                 cwd=tmp_path, env={k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")})
    try:
        assert drv.wait(300) == 0, drv.stderr()[-3000:]
        assert intruder.wait(120) != 0
    finally:
        drv.kill_group()
        kill_process_group(intruder.pid)
    assert "InvalidAuthToken" in (tmp_path / "intruder.log").read_text()
    assert "Ray: 2 node(s), 2 CPU" in drv.stderr()  # joined the cluster, did not start its own
    assert drv.json()["counts"] == {"TERMINATED": 2}

    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["depmicro-twonode"], filter_string="tags.`depmicro.kind` = 'trial'")
    assert len(runs) == 2
    nodes = set(runs["tags.depmicro.node_id"])
    assert len(nodes) == 2 and all(len(n) == 56 for n in nodes)  # two distinct Ray node ids (28-byte hex)
    results = [json.loads(f.read_text().splitlines()[-1]) for f in (storage / "twonode").glob("*/result.json")]
    assert {r["node_id"] for r in results} == nodes
