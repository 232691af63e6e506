"""Shared fixtures: small factories, as in vLLM's and LanceDB's test suites.

- `tiny_vx`: the built-in tiny Video-XL (CPU, fp32), loaded once per session.
- `oracle_dir`: `tests/data/oracle`, a copy of `shared/oracle` (checkpoint + outputs written by the
  original Video-XL code), kept in the repository so CI has it.
- `sample_dir`: real H.264 sample videos (+ event JSON) made once per session with
  `tasks.samples.make_sample_videos`.
- `archive`: a fresh archive in a temporary folder.

`make test` runs the suite on two pytest-xdist workers, one test module at a time per worker
(`--dist loadfile`): module-scoped fixtures (a module's Ray, its corpus) are made once, and at
most two Rays run on the machine at once, which works (each private local Ray takes free ports;
`tasks.reaper` spares processes that the other worker starts).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Prefect's ephemeral server logs "Stopping temporary server" at interpreter exit, after pytest has
# closed the captured streams ("I/O operation on closed file"); INFO is not needed in tests.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# The ephemeral API server must start within this many seconds (default 20): on 2 loaded cores the
# first start has been seen to take longer ("Timed out while attempting to connect to ephemeral Prefect API").
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

# Each test process (each pytest-xdist worker) gets its own Prefect home: the ephemeral API server
# keeps its SQLite database there, and two workers on one database file would contend for its lock.
# It also keeps the tests off the user's ~/.prefect. Tests that need their own (a real server) set it.
_PREFECT_HOME = tempfile.mkdtemp(prefix="vxl-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)

ORACLE = Path(__file__).parent / "data" / "oracle"


@pytest.fixture(scope="session")
def oracle_dir() -> Path:
    assert (ORACLE / "checkpoint" / "config.json").is_file(), f"oracle data missing at {ORACLE}"
    return ORACLE


@pytest.fixture(scope="session")
def tiny_vx():
    from model import load_model

    return load_model("tiny", device="cpu")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    from tasks.samples import make_sample_videos

    out = tmp_path_factory.mktemp("samples")
    make_sample_videos(out, count=3, seconds=20.0, seed=0)
    return out


@pytest.fixture
def archive(tmp_path):
    from storage import open_archive

    return open_archive(str(tmp_path / "archive"))


@pytest.fixture(scope="module")
def ray_session():
    """One private local Ray (2 CPUs, no dashboard) for a module's tests: `ensure_ray` reuses the Ray
    this process already runs, so runs and CLI invocations inside the module do not each start and
    stop one (about 10 s each on 2 cores); the encode actors a test kept are released at the end.
    Tests of Ray's own start-up do not use it."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning",
                 runtime_env={"env_vars": {"PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                                           "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    from tasks.index import shutdown_workers

    shutdown_workers()
    ray.shutdown()
