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
