"""`tasks.ray_runtime.ensure_ray`: which Ray a run uses, and what its workers are given (issue 15)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def _start_head(env: dict) -> tuple[subprocess.Popen, str]:
    """`ray start --head --block` in its own process group (the test kills the group); returns it
    and the address it prints once up. (Not /tmp/ray/ray_current_cluster: a Ray started meanwhile by
    another test process on the machine rewrites that file.)"""
    port = _free_port()
    # the raylet must register within RAY_raylet_start_wait_time_s (30 s by default): on 2 cores
    # shared with another test process's Ray it has been seen to take longer
    env = {"RAY_raylet_start_wait_time_s": "120", **env}
    head = subprocess.Popen([RAY, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                             "--block", "--disable-usage-stats"], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in head.stdout:  # ends when the process does; the test's timeout bounds a hang
        seen.append(line)
        found = re.search(r"ray start --address='([^']+)'", line)
        if found and found.group(1).endswith(f":{port}"):
            threading.Thread(target=head.stdout.read, daemon=True).start()  # keep the pipe drained
            return head, found.group(1)
    raise AssertionError("ray start --head did not come up: " + "".join(seen)[-3000:])


def _stop_head(head: subprocess.Popen) -> None:
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_local_by_default_never_joins_a_cluster_started_on_the_machine():
    """With a cluster started by `ray start --head` on this machine, a run without --ray-address /
    RAY_ADDRESS still gets a private local instance (plain `ray.init()` joined the other cluster),
    and says so."""
    head, address = _start_head(_env())
    try:
        code = """
import json, ray
from tasks.ray_runtime import ensure_ray
info = ensure_ray(num_cpus=1, include_dashboard=False)

@ray.remote(num_cpus=0)
def secret_seen():
    import os
    return os.environ.get("AWS_SECRET_ACCESS_KEY")

job_env = ray.get_runtime_context().runtime_env.get("env_vars", {})
print("RESULT", json.dumps({"started": info.started_here, "gcs": ray.get_runtime_context().gcs_address,
                            "describe": info.describe(), "job_env": job_env,
                            "worker_secret": ray.get(secret_seen.remote())}))
ray.shutdown()
"""
        secrets = {"AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "AWS_ACCESS_KEY_ID": "AKIDVXLTEST",
                   "PREFECT_API_KEY": "pnu_vxltest", "AWS_REGION": "eu-west-1"}
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**_env(), **secrets}, capture_output=True,
                             text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
        res = json.loads(out.stdout.split("RESULT", 1)[1])
        assert res["started"] is True
        assert res["gcs"] != address, f"joined the machine's cluster at {address}: {res}"
        assert res["describe"].startswith("Ray: a private local Ray started for this run"), res
        # credentials never travel in the runtime_env (readable in the dashboard and state API) ...
        assert not {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "PREFECT_API_KEY"} & set(res["job_env"]), res
        assert "s3cr3t" not in json.dumps(res["job_env"]) and res["job_env"].get("AWS_REGION") == "eu-west-1"
        # ... yet a local Ray's workers have them, from the environment they inherit
        assert res["worker_secret"] == "s3cr3t-value"
    finally:
        _stop_head(head)


CONNECT = """
from tasks.ray_runtime import RayUnavailable, ensure_ray
try:
    info = ensure_ray(ADDRESS)
    print("CONNECTED", info.started_here)
except RayUnavailable as exc:
    print("REFUSED", exc)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_token_auth_a_wrong_token_names_the_fix_and_the_right_one_connects():
    """A cluster started with token authentication (`RAY_AUTH_MODE=token`): a run given a wrong token
    ends with `RayUnavailable` that names RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH (Ray itself reports
    only a failure to connect, the cause in repeated warnings: issue 15); the right token connects
    to that cluster rather than starting one."""
    token = "vxl" + "0123456789abcdef" * 2
    env = {**_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    head, address = _start_head(env)
    try:
        code = CONNECT.replace("ADDRESS", repr(address))

        def connect(with_token: str) -> str:
            out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, "RAY_AUTH_TOKEN": with_token},
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr[-3000:]
            return out.stdout

        wrong = connect("wrong" + token[5:])
        assert wrong.startswith("REFUSED"), wrong
        assert address in wrong and "RAY_AUTH_TOKEN" in wrong and "RAY_AUTH_TOKEN_PATH" in wrong, wrong
        assert connect(token).strip() == "CONNECTED False"  # joined the cluster, did not start one
    finally:
        _stop_head(head)


DRIVER = """
import sys, time
from tasks.ray_runtime import ensure_ray
ensure_ray(num_cpus=1, include_dashboard=True)
print("UP", flush=True)
time.sleep(600)
"""


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow
@pytest.mark.parametrize("when", ["during_start_up", "running"])
def test_sigkill_of_the_driver_leaves_no_ray_process(when):
    """SIGKILL of a driver that started a private Ray, mid start-up (as soon as the raylet exists)
    or once running: within seconds nothing it started is left (the reported case left
    `ray::DashboardAgent` and `ray::RuntimeEnvAgent` orphaned, listening on ports)."""
    from tasks.reaper import _stat, descendants

    drv = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        seen: dict[int, int] = {}
        while time.monotonic() < deadline:
            seen.update(descendants([drv.pid]))
            names = " ".join(_cmdline(p) for p in seen)
            if when == "during_start_up" and "raylet" in names:
                break
            if when == "running" and "ray::DashboardAgent" in names and "ray::RuntimeEnvAgent" in names:
                time.sleep(2)
                seen.update(descendants([drv.pid]))
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"Ray did not start: {[_cmdline(p) for p in seen]}")
        os.kill(drv.pid, signal.SIGKILL)
        drv.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            alive = {p: _cmdline(p) for p, t in seen.items() if (st := _stat(p)) is not None and st[1] == t}
            if not alive:
                break
            time.sleep(0.5)
        assert not alive, f"left running after the driver's SIGKILL: {alive}"
    finally:
        if drv.poll() is None:
            os.killpg(drv.pid, signal.SIGKILL)


SIBLINGS = """
import json, os, subprocess, sys, time
from tasks import reaper

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False

driver = subprocess.Popen([sys.executable, "-c",
                           "import subprocess, time; subprocess.Popen(['sleep', '120']); time.sleep(120)"])
watcher = reaper.start(driver.pid)
deadline = time.monotonic() + 30
while not (kids := reaper.descendants([driver.pid])) and time.monotonic() < deadline:
    time.sleep(0.1)
time.sleep(1.5)  # the watcher has seen the driver's child
sibling = subprocess.Popen(["sleep", "120"])  # this process's own: same group, started after the watcher
driver.kill()
driver.wait()
os.waitpid(watcher, 0)
out = {"driver_child": [alive(p) for p in kids], "sibling": alive(sibling.pid)}
sibling.kill()
print(json.dumps(out))
"""


@pytest.mark.timeout(120)
def test_reaper_kills_the_drivers_processes_but_not_its_siblings():
    """The watcher of a killed driver SIGKILLs what the driver started, and spares processes that the
    driver's parent started in the same process group after the watcher began (pytest starting its
    own Ray right after a driver subprocess ended had its GCS killed: "Failed to start GCS")."""
    r = subprocess.run([sys.executable, "-c", SIBLINGS], cwd=REPO, capture_output=True, text=True, timeout=100,
                       start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"driver_child": [False], "sibling": True}, out
