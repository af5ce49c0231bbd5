"""A real two-node Ray cluster on this machine (loopback, token authentication), and a study whose
trials land on both nodes, while a node holding the wrong token is refused. The study tracks to a
real MLflow server (cluster/mlflow/start-server.sh) over HTTP, backed by PostgreSQL, with artifacts
proxied by the server: the cluster path of cluster/README.md with every part real. Where no
PostgreSQL is reachable the test skips, saying why (.ci/run starts one: .ci/postgres.sh).

Every Ray process and the server are removed at the end, by process group, even on failure (never
`ray stop`: on a shared machine it would stop other people's Ray too)."""
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

from depmicro.core.cli import main
from depmicro.studies import schema
from tests.conftest import Driver, kill_process_group, small_study
from tests.mlflow_server import MlflowServer, create_database, drop_database, pg_dsn_or_skip, query, start_server

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


@pytest.fixture
def mlflow_server(tmp_path):
    """The tracking server on a free loopback port over a fresh PostgreSQL database; started here,
    ready once the test calls wait_ready() (its schema set-up overlaps the Ray start)."""
    dsn = pg_dsn_or_skip()
    backend, database = create_database(dsn)
    server = None
    try:
        server = start_server(backend, tmp_path, _free_port())
        yield server
    finally:
        if server is not None:
            kill_process_group(server.proc.pid)
        drop_database(dsn, database)


def test_study_on_two_nodes_tracks_to_the_mlflow_server(mlflow_server: MlflowServer, two_node_cluster, tmp_path, capsys):
    address, env = two_node_cluster
    server = mlflow_server
    ready_s = server.wait_ready()
    uri = server.uri
    assert f"Uvicorn running on {uri}" in server.log.read_text()  # the script's default host is loopback
    # two 1-CPU trials at once on two 1-CPU nodes: the scheduler has to use both
    spec = small_study(tmp_path, "twonode", epochs=3, num_samples=2, scheduler="none", baselines=[],
                       max_concurrent_trials=2, synthetic={"n_samples": 600})
    storage = tmp_path / "depmicro_results"
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

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(schema.experiment_name("twonode"))
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get(schema.TAG_KIND) == schema.KIND_STUDY]
    trials = [r for r in runs if r.data.tags.get(schema.TAG_KIND) == schema.KIND_TRIAL]
    assert len(parents) == 1 and len(trials) == 2 and len(runs) == 3
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    assert {r.data.tags[schema.TAG_PARENT] for r in trials} == {parent.info.run_id}
    assert {(r.info.status, r.data.tags[schema.TAG_STATUS]) for r in trials} == {("FINISHED", schema.FINISHED)}
    nodes = {r.data.tags[schema.TAG_NODE_ID] for r in trials}
    assert len(nodes) == 2 and all(len(n) == 56 for n in nodes)  # two distinct Ray node ids (28-byte hex)
    results = [json.loads(f.read_text().splitlines()[-1]) for f in (storage / "twonode").glob("*/result.json")]
    assert {r["node_id"] for r in results} == nodes

    # the runs live in PostgreSQL, not in some local store the client fell back to
    rows = query(server.backend_dsn, "SELECT run_uuid FROM runs WHERE experiment_id = %s", int(exp.experiment_id))
    assert {r[0] for r in rows} == {r.info.run_id for r in runs}
    # artifacts went through the server (mlflow-artifacts:/ proxy) into its artifact root
    artifacts = {}
    for r in runs:
        assert r.info.artifact_uri.startswith("mlflow-artifacts:/"), r.info.artifact_uri
        on_disk = server.artifacts / exp.experiment_id / r.info.run_id / "artifacts"
        artifacts[r.info.run_id] = sorted(str(p.relative_to(on_disk)) for p in on_disk.rglob("*") if p.is_file())
    assert schema.ARTIFACT_SPEC in artifacts[parent.info.run_id]
    for r in trials:
        files = artifacts[r.info.run_id]
        assert {schema.ARTIFACT_CONFIG, schema.ARTIFACT_PER_MICROBE, f"{schema.ARTIFACT_MODEL}/model.safetensors"} <= set(files), files
        listed = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {schema.ARTIFACT_CONFIG, schema.ARTIFACT_PER_MICROBE, schema.ARTIFACT_MODEL} <= listed
    assert not (tmp_path / "mlartifacts").exists() and not (tmp_path / "mlruns").exists()
    with capsys.disabled():  # the figures the report quotes
        print(f"\nMLflow server (PostgreSQL) up {ready_s:.1f} s after the Ray nodes; through it: {len(parents)} parent "
              f"run ({len(artifacts[parent.info.run_id])} artifact file), {len(trials)} trial runs "
              f"({[len(artifacts[r.info.run_id]) for r in trials]} artifact files: {artifacts[trials[0].info.run_id]})")

    # analyze and export read the study back through the same server
    capsys.readouterr()
    report = tmp_path / "analysis"
    assert main(["analyze", "twonode", "--tracking-uri", uri, "--out", str(report), "--json"]) == 0
    assert (report / "report.html").is_file()
    logged = server.artifacts / exp.experiment_id / parent.info.run_id / "artifacts" / "analysis" / "report.html"
    assert logged.read_bytes() == (report / "report.html").read_bytes()  # attached to the parent through the server
    capsys.readouterr()
    bundle = tmp_path / "bundle"
    assert main(["export", "twonode", "--tracking-uri", uri, "--out", str(bundle), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    best = max(trials, key=lambda r: r.data.metrics["best_val_pcc_per_microbe"])
    assert out["run_id"] == best.info.run_id
    assert out["value"] == pytest.approx(best.data.metrics["best_val_pcc_per_microbe"])
    provenance = json.loads((bundle / "provenance.json").read_text())
    assert provenance["tracking_uri"] == uri and provenance["model_artifact"] == f"runs:/{best.info.run_id}/model"
    assert (bundle / "model.safetensors").read_bytes() == (
        server.artifacts / exp.experiment_id / best.info.run_id / "artifacts" / schema.ARTIFACT_MODEL / "model.safetensors").read_bytes()
