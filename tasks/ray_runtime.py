"""Connecting to Ray: an existing cluster (`--ray-address` / `RAY_ADDRESS`) or a local one on demand.

Ray workers never run Prefect's engine (the flow runs in the driver and drives Ray actors), so no
worker ever starts a temporary Prefect server (ECOSYSTEM.md: 2-3x slower). The environment given
to workers still carries `PREFECT_API_URL` when the driver has one, so that code in a worker that
does touch Prefect talks to the same server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


class RayUnavailable(RuntimeError):
    """Ray could not be reached or started (an infrastructure error: CLI exit status 1)."""


@dataclass
class RayInfo:
    """Where the work runs.

    Attributes:
        address: the cluster address ("local" for a Ray started by this process).
        started_here: True when this process started Ray (and should shut it down).
        dashboard_url: e.g. "http://127.0.0.1:8265", or None when the dashboard is not running.
        num_gpus: GPUs in the cluster (0 on CPU machines).
        num_cpus: CPUs in the cluster.
    """

    address: str
    started_here: bool
    dashboard_url: str | None
    num_gpus: int
    num_cpus: int

    def describe(self) -> str:
        """One line for the first line of a command's output: which Ray the work runs on."""
        where = ("a private local Ray started for this run" if self.started_here and self.address == "local"
                 else f"the Ray cluster at {self.address}")
        res = f"{self.num_cpus} CPUs" + (f", {self.num_gpus} GPUs" if self.num_gpus else "")
        dash = f"; dashboard {self.dashboard_url}" if self.dashboard_url else ""
        return f"Ray: {where} ({res}){dash}"


WORKER_ENV_PASSED = ("PREFECT_API_URL", "PREFECT_HOME", "HF_HUB_OFFLINE", "AWS_ENDPOINT_URL", "AWS_REGION",
                     "AWS_DEFAULT_REGION", "VXL_CLIP_WEIGHTS")
"""Driver variables copied to Ray workers: settings only. Never credentials (AWS keys, session tokens,
PREFECT_API_KEY): a runtime_env is visible to anyone who can read the Ray dashboard or state API
(issue 15). Workers read credentials from their node's own environment (a local Ray's workers
inherit the driver's; on a cluster, each node's `ray start` environment, an instance profile or a
secrets manager; docs/OPERATIONS.md, "Credentials")."""


def worker_env() -> dict[str, str]:
    """Environment variables for Ray workers (runtime_env `env_vars`): `WORKER_ENV_PASSED` that are set."""
    env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false",
           "RAY_DEDUP_LOGS": "0"}
    for k in WORKER_ENV_PASSED:
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def ensure_ray(address: str | None = None, num_cpus: int | None = None, include_dashboard: bool = True) -> RayInfo:
    """Connect to Ray at `address` (or `RAY_ADDRESS`), else start a private local Ray with its dashboard.

    Without an address the local instance is always a new one (`ray.init(address="local")`), even
    when another cluster runs on this machine; `address="auto"` joins that cluster explicitly.

    Args:
        address: "ray://host:10001", "host:6379", "auto", or None for `RAY_ADDRESS` / local.
        num_cpus: CPUs for a local Ray (default: all).
        include_dashboard: start the dashboard (and its Prometheus metrics) for a local Ray.
    Raises:
        RayUnavailable: the cluster at `address` could not be reached, or Ray failed to start.
    """
    import warnings

    import ray

    # Ray starts its processes with fork+exec; lance/lancedb warn about any fork once imported.
    warnings.filterwarnings("ignore", message=".*lancedb fork support.*")
    warnings.filterwarnings("ignore", message=".*lance is not fork-safe.*")
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        return _info(address or "local", False, getattr(ctx, "dashboard_url", None))
    kwargs = dict(ignore_reinit_error=True, log_to_driver=False, configure_logging=True, logging_level="warning",
                  runtime_env={"env_vars": worker_env()})
    try:
        if address:
            ctx = ray.init(address=address, **kwargs)
            started = False
        else:
            _start_reaper()  # a SIGKILL of this process (even now, mid start-up) leaves no Ray process behind
            # "local": always a new private instance, never a cluster someone started on this machine
            # with `ray start` (ray.init() with no address would join it; issue 15). Its dashboard
            # listens on 127.0.0.1 only.
            ctx = ray.init(address="local", num_cpus=num_cpus, include_dashboard=include_dashboard,
                           dashboard_host="127.0.0.1", **kwargs)
            started = True
    except ray.exceptions.AuthenticationError as exc:
        raise RayUnavailable(
            f"the Ray cluster at {address} refused this process's authentication token: {exc.message}. "
            "Give the cluster's token in RAY_AUTH_TOKEN (or a file in RAY_AUTH_TOKEN_PATH) with RAY_AUTH_MODE=token "
            "(docs/OPERATIONS.md, \"Ray authentication\")."
        ) from exc
    except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError by transport
        where = address or "a local Ray"
        auth = ""
        if address and os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled":
            auth = (" If the cluster uses token authentication (RAY_AUTH_MODE=token), check RAY_AUTH_TOKEN / "
                    "RAY_AUTH_TOKEN_PATH: Ray reports a wrong or missing token only as a failure to connect.")
        raise RayUnavailable(
            f"could not {'reach' if address else 'start'} {where}: {exc}. Check --ray-address / RAY_ADDRESS "
            f"(`ray status` on the head node) or run without it to use a private local Ray.{auth}"
        ) from exc
    url = getattr(ctx, "dashboard_url", None) or None
    if url and not url.startswith("http"):
        url = "http://" + url
    return _info(address or "local", started, url)


_REAPER_FOR: int | None = None


def _start_reaper() -> None:
    """Start `tasks.reaper` for this process, once (it outlives a SIGKILL of this process and then
    kills the private Ray's processes this process left)."""
    global _REAPER_FOR
    if _REAPER_FOR == os.getpid():
        return
    from tasks.reaper import start

    try:
        start()
    except OSError:  # no watcher: a normal exit still shuts Ray down
        return
    _REAPER_FOR = os.getpid()


def _info(address: str, started: bool, url: str | None) -> RayInfo:
    import ray

    res = ray.cluster_resources()
    return RayInfo(address=address, started_here=started, dashboard_url=url,
                   num_gpus=int(res.get("GPU", 0)), num_cpus=int(res.get("CPU", 0)))


def shutdown_if_started(info: RayInfo | None) -> None:
    if info is not None and info.started_here:
        import ray

        ray.shutdown()
