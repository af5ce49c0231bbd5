"""Connecting the study driver to Ray: a private local cluster by default, or an existing one.

The default is `address="local"`, not `ray.init()`: a plain `ray.init()` silently joins any cluster
another `ray start` left on this machine, and a researcher's quick study must not land on (or be
killed with) somebody else's cluster.

Token authentication (Ray >= 2.52): a new local cluster enables it by itself. To join a cluster
started with `ray start --head`, set `RAY_AUTH_MODE=token` and either `RAY_AUTH_TOKEN` or
`RAY_AUTH_TOKEN_PATH` (default `~/.ray/auth_token`) in the driver's environment, exactly as for
`ray start --address`; an explicit address never enables token auth on its own (Ray's rule).
"""
from __future__ import annotations

import os

from depmicro.core.errors import DepmicroError


def connect(address: str | None = None, num_cpus: int | None = None, quiet: bool = True) -> dict:
    """Start or join Ray; returns what the driver sees (address, node count, CPUs, GPUs)."""
    import ray

    if ray.is_initialized():
        return describe()
    kwargs: dict = {"ignore_reinit_error": True, "log_to_driver": not quiet}
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if address in (None, "", "local"):
        kwargs.update(address="local", include_dashboard=False)
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
    else:
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        hint = ""
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint = " (a cluster with token authentication also needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH)"
        raise DepmicroError(f"cannot reach a Ray cluster at {address}: {str(exc).splitlines()[0]}{hint}") from None
    except Exception as exc:  # noqa: BLE001 - Ray raises RuntimeError/AuthenticationError/ValueError alike
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = ""
        if "auth" in first.lower() or "token" in first.lower():
            hint = " (set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH to the cluster's token file)"
        raise DepmicroError(f"cannot start or join Ray{' at ' + address if address else ''}: {first}{hint}") from None
    return describe()


def describe() -> dict:
    import ray

    res = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {
        "address": ray.get_runtime_context().gcs_address,
        "nodes": len(nodes),
        "cpus": float(res.get("CPU", 0.0)),
        "gpus": float(res.get("GPU", 0.0)),
    }


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
