"""Shared fixtures: small study files derived from studies/quickstart.yaml, study drivers run as
`depmicro` subprocesses (each in its own session, so a test can SIGKILL a driver and still remove
every Ray process it started), and the quickstart study run once per test session.

Why subprocesses: a study driver owns a Ray instance; running it inside pytest would leave Ray in
the test process and make "kill the driver" impossible to test honestly.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

# The in-process tests train tiny models (16-taxon tables, batches of 32). At that size a second intra-op
# thread costs more in synchronization than it computes, and much more when anything else holds a core
# (docs/model-log.md section 15). Subprocesses (CLI commands, study drivers, Ray trials) set their own.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "studies" / "quickstart.yaml"


def small_study(directory: Path, name: str, *, epochs: int = 3, num_samples: int = 3, base: dict | None = None,
                synthetic: dict | None = None, **top) -> Path:
    """The quickstart study cut down for tests: fewer trials and epochs, same code path."""
    spec = yaml.safe_load(QUICKSTART.read_text())
    spec["base_config"]["file"] = str(QUICKSTART.parent / spec["base_config"]["file"])  # the copy lives elsewhere
    spec["name"] = name
    spec["num_samples"] = num_samples
    # fewer diffusion steps keep each epoch's validation imputation cheap; the code path is the same
    spec["base_config"].update({"epochs": epochs, "vae_epochs": 3, "timesteps": 200, **(base or {})})
    spec["search_space"]["sampling_fraction"] = {"type": "choice", "values": [10, 20]}
    spec["scheduler"] = {"type": "asha", "grace_period": 1, "reduction_factor": 2}
    if synthetic:
        spec["datasets"][0]["synthetic"].update(synthetic)
    spec.update(top)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class Driver:
    """`python -m depmicro.core.cli ARGS` in a new session; output goes to files (no pipe stalls)."""

    def __init__(self, args: list[str], cwd: Path, env: dict | None = None, tag: str = "driver"):
        self.cwd = Path(cwd)
        self.out = self.cwd / f"{tag}.out"
        self.err = self.cwd / f"{tag}.err"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(self.out, "w") as o, open(self.err, "w") as e:
            self.proc = subprocess.Popen([sys.executable, "-m", "depmicro.core.cli", *map(str, args)], cwd=cwd,
                                         stdout=o, stderr=e, env=full_env, start_new_session=True)
        self.pgid = self.proc.pid

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(f"driver did not finish in {timeout}s; stderr tail:\n{self.stderr()[-3000:]}") from None

    def wait_for(self, text: str, timeout: float) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if text in self.stderr():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"driver exited ({self.proc.returncode}) before {text!r}:\n{self.stderr()[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"no {text!r} in {timeout}s:\n{self.stderr()[-3000:]}")

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def json(self) -> dict:
        return json.loads(self.stdout())

    def kill_group(self) -> None:
        """SIGTERM then SIGKILL the driver's whole session: the driver and the Ray processes it started."""
        kill_process_group(self.pgid)


def _alive_in_group(pgid: int) -> bool:
    """Zombies count as gone: their parent died with the group and nobody may reap them here."""
    import psutil

    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def kill_process_group(pgid: int, grace: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        t0 = time.time()
        while time.time() - t0 < grace and _alive_in_group(pgid):
            time.sleep(0.2)
        if not _alive_in_group(pgid):
            return


def study_args(directory: Path) -> tuple[str, Path]:
    """Tracking URI and storage inside a test directory (never the developer's ./mlflow.db)."""
    return f"sqlite:///{directory / 'mlflow.db'}", directory / "depmicro_results"


def run_study(spec: Path, directory: Path, timeout: float, uri: str | None = None, storage: Path | None = None) -> dict:
    """`depmicro study run SPEC --json` to its end, in `directory` (its own MLflow store and storage unless
    given); asserts exit 0 and returns the printed summary."""
    own_uri, own_storage = study_args(directory)
    drv = Driver(["study", "run", spec, "--tracking-uri", uri or own_uri, "--storage", storage or own_storage, "--json"],
                 cwd=directory)
    try:
        assert drv.wait(timeout) == 0, drv.stderr()[-3000:]
        return drv.json()
    finally:
        drv.kill_group()


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
    """The quickstart study (3 trials x 3 epochs, 2 at a time, ASHA, mean+knn baselines), run once
    through the CLI, as the README runs it. Yields a dict: name, uri, storage, dir, summary, stderr."""
    d = tmp_path_factory.mktemp("quickstart")
    spec = small_study(d, "quickstart", epochs=3, num_samples=3)
    uri, storage = study_args(d)
    drv = Driver(["study", "run", spec, "--tracking-uri", uri, "--storage", storage, "--json"], cwd=d)
    t0 = time.time()
    try:
        code = drv.wait(300)
        assert code == 0, f"quickstart study failed ({code}):\n{drv.stderr()[-4000:]}"
        yield {"name": "quickstart", "uri": uri, "storage": storage, "dir": d, "spec": spec,
               "summary": drv.json(), "stderr": drv.stderr(), "seconds": time.time() - t0}
    finally:
        drv.kill_group()


@pytest.fixture(scope="session")
def quickstart_study(quickstart_run):
    """(study name, tracking uri, storage path) of the quickstart study run once per session."""
    r = quickstart_run
    return r["name"], r["uri"], str(r["storage"])
