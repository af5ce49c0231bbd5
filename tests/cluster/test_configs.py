"""The cluster files are what they claim: a launcher config valid against Ray's own schema with a
GPU pool and token auth, KubeRay manifests with a GPU worker group, and the MLflow server script."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def test_cluster_launcher_config_matches_rays_schema():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cfg = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    jsonschema.validate(cfg, schema)
    pool = cfg["available_node_types"]["gpu_pool"]
    assert pool["node_config"]["InstanceType"].startswith(("g5", "g6", "p4", "p5"))
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"] == {"CPU": 0}
    assert all("RAY_AUTH_MODE=token" in c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c)
    assert "~/.ray/auth_token" in cfg["file_mounts"]


def test_kuberay_manifests():
    docs = list(yaml.safe_load_all((CLUSTER / "kuberay" / "raycluster.yaml").read_text()))
    rc = next(d for d in docs if d["kind"] == "RayCluster")
    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    assert rc["apiVersion"] == job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    for spec in (rc["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["rayVersion"] == "2.60.0" and spec["authOptions"] == {"mode": "token"}
        (gpu,) = spec["workerGroupSpecs"]
        (container,) = gpu["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert any(t["key"] == "nvidia.com/gpu" for t in gpu["template"]["spec"]["tolerations"])
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert job["spec"]["entrypoint"].split()[:3] == ["depmicro", "study", "run"]
    assert any(d["kind"] == "PersistentVolumeClaim" and d["spec"]["accessModes"] == ["ReadWriteMany"] for d in docs)


def test_mlflow_server_script_is_valid_bash_with_sql_backend_and_artifact_root():
    script = CLUSTER / "mlflow" / "start-server.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert "--backend-store-uri" in text and "--artifacts-destination" in text and "mlflow db upgrade" in text
    assert 'HOST="${MLFLOW_HOST:-127.0.0.1}"' in text  # loopback unless the operator opens it
    assert (CLUSTER / "mlflow" / "README.md").is_file()


def test_storage_folder_is_group_owned_not_world_writable():
    """`study resume` unpickles Tune's state from the storage folder: only a group may write there."""
    cfg = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    cmds = " ".join(cfg["initialization_commands"])
    assert "777" not in cmds and "o+w" not in cmds
    assert "chgrp depmicro /shared" in cmds and "chmod 2770 /shared" in cmds
    assert "unpickles" in (CLUSTER / "README.md").read_text()


def test_mlflow_server_binds_loopback_unless_told_and_offers_basic_auth(tmp_path):
    """Run the script with a stub `mlflow` on PATH and read the arguments it would serve with."""
    script = CLUSTER / "mlflow" / "start-server.sh"
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "mlflow").write_text('#!/bin/sh\n[ "$1" = server ] && echo "$@" > "$ARGS_FILE"\nexit 0\n')
    (stub / "mlflow").chmod(0o755)
    import os
    import sys

    def serve(**env) -> tuple[str, str]:
        args = tmp_path / "args.txt"
        args.unlink(missing_ok=True)
        full = {**os.environ, "PATH": f"{stub}:{Path(sys.executable).parent}:{os.environ['PATH']}",
                "ARGS_FILE": str(args), "MLFLOW_BACKEND_URI": f"sqlite:///{tmp_path}/m.db",
                "MLFLOW_ARTIFACTS": str(tmp_path / "a"), **env}
        p = subprocess.run(["bash", str(script)], env=full, capture_output=True, text=True, cwd=tmp_path)
        return (args.read_text() if args.exists() else ""), p.stderr

    default, err = serve()
    assert "--host 127.0.0.1" in default and "--app-name" not in default and "warning" not in err
    open_, err = serve(MLFLOW_HOST="0.0.0.0")
    assert "--host 0.0.0.0" in open_ and "without authentication" in err
    try:
        import flask_wtf  # noqa: F401
    except ImportError:
        args, err = serve(MLFLOW_AUTH="basic-auth")
        assert args == "" and "mlflow[auth]" in err  # refuses to start an auth server it cannot run
    else:
        args, err = serve(MLFLOW_AUTH="basic-auth", MLFLOW_HOST="0.0.0.0")
        assert "--app-name basic-auth" in args and "warning" not in err
