"""prefect.yaml on a real Prefect server, as an operator runs it (issue 15): `prefect server start`,
a process work pool, `vxl deploy`, `prefect worker start`, then every deployment run to completion
on generated videos by the worker (each flow run in its own process, loaded from its file path, on a
Ray cluster named by RAY_ADDRESS), its artifact checked, and the nightly schedule's runs created by
the server's scheduler. Plus the deploy-time validation that needs no server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _deploy_env(tmp_path: Path, lib: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VXL_", "RAY_ADDRESS"))}
    env.update({"VXL_HOME": str(REPO), "VXL_LIBRARY": str(lib), "VXL_ARCHIVE": str(tmp_path / "archive"),
                "VXL_MODEL": "tiny", "VXL_CLIP_WEIGHTS": "none", "VXL_VICO_OUT": str(tmp_path / "vico"), **extra})
    return env


def test_deploy_refuses_unset_variables_and_placeholders(tmp_path):
    """Nothing reaches the server while a {{ $VAR }} is unset or a parameter is invalid; each problem
    names the deployment, the parameter and the variable. prefect.yaml itself keeps the schedule off."""
    from flows.deploy import DeployError, UnresolvedParameter, deploy, reject_templates, resolve

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly-index")
    assert nightly["schedules"][0]["active"] is False  # a bare `prefect deploy --all` schedules nothing
    env = _deploy_env(tmp_path, tmp_path)
    del env["VXL_ARCHIVE"]
    with pytest.raises(DeployError) as exc:
        resolve(spec, env)
    assert "deployment nightly-index, parameter archive: set VXL_ARCHIVE" in str(exc.value)
    assert "deployment ask-library, parameter archive_uri: set VXL_ARCHIVE" in str(exc.value)

    env = _deploy_env(tmp_path, tmp_path / "no_such_library", VXL_MODEL=str(tmp_path / "no_model"))
    with pytest.raises(DeployError) as exc:
        deploy(REPO / "prefect.yaml", env=env, dry_run=True)
    text = str(exc.value)
    assert "deployment nightly-index: parameter sources" in text and "no_such_library" in text
    assert "deployment ask-library: parameter model" in text
    ok = deploy(REPO / "prefect.yaml", env=_deploy_env(tmp_path, tmp_path), dry_run=True)
    assert ok["deployments"] == ["nightly-index", "ask-library", "synth-vico", "evaluate", "train"]
    assert resolve(spec, _deploy_env(tmp_path, tmp_path))["deployments"][0]["parameters"]["clip_weights"] is None

    with pytest.raises(UnresolvedParameter, match="parameter archive .*VXL_ARCHIVE"):
        reject_templates("index-corpus", sources=["/v"], archive="{{ $VXL_ARCHIVE }}")


def test_deploy_checks_an_options_mapping_against_the_jobs_model(tmp_path):
    """The train and evaluate deployments take their job's options model as one `options` mapping;
    `vxl deploy` refuses one that the model refuses, naming the deployment and the flag."""
    from flows.deploy import resolve, validate

    spec = resolve(yaml.safe_load((REPO / "prefect.yaml").read_text()), _deploy_env(tmp_path, tmp_path))
    assert validate(spec) == []
    deps = {d["name"]: d for d in spec["deployments"]}
    assert deps["evaluate"]["parameters"]["options"] == {"archive": str(tmp_path / "archive"), "model": "tiny"}
    deps["train"]["parameters"] = {"options": {"steps": "ten", "data": ["toy:4"]}}
    deps["evaluate"]["parameters"]["options"]["top_window"] = 2
    problems = validate(spec)
    assert len(problems) == 2, problems
    assert problems[0].startswith("deployment evaluate: parameter options: unknown option 'top_window'")
    assert problems[1].startswith("deployment train: parameter options: --steps: Input should be a valid integer")
    deps["train"]["parameters"] = {"options": {"steps": 0}}
    assert "--steps must be an integer >= 1, got 0" in validate(spec)[-1]
    # ask-library takes its options flat (one parameter per field), checked against the same model
    deps["train"]["parameters"] = {}
    deps["evaluate"]["parameters"]["options"].pop("top_window")
    deps["ask-library"]["parameters"]["max_new_tokens"] = 0
    assert validate(spec) == ["deployment ask-library: parameters: --max-new-tokens must be >= 1, got 0"]
    deps["ask-library"]["parameters"].update(max_new_tokens=8, top_window=2)
    assert validate(spec)[0].startswith("deployment ask-library: parameters: unknown option 'top_window'")


RUNS = r"""
import json, sys, time
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, DeploymentFilter,
    DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType)
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment

cfg = json.loads(sys.argv[1])
out = {"scheduled": 0, "runs": {}}
with get_client(sync_client=True) as client:
    dep = client.read_deployment_by_name("index-corpus/nightly-index")
    out["schedules_active"] = [s.active for s in dep.schedules]
    for phase in cfg["phases"]:  # the runs of a phase run at the same time (the worker has no limit)
        started = {name: (run_deployment(name, parameters=params, timeout=0), key, time.time())
                   for name, params, key in phase}
        deadline = time.time() + cfg["timeout"]
        while started and time.time() < deadline:
            for name, (fr, key, t0) in list(started.items()):
                run = client.read_flow_run(fr.id)
                if run.state is None or not run.state.is_final():
                    continue
                arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
                out["runs"][name] = {"state": run.state.type.value, "state_name": run.state.name,
                                     "message": run.state.message, "artifacts": [a.key for a in arts],
                                     "seconds": time.time() - t0,
                                     "artifact": next((a.data for a in arts if a.key == key), None)}
                del started[name]
            time.sleep(1)
        if not out["scheduled"]:  # the server's scheduler service has had minutes by now
            out["scheduled"] = len(client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])))))
        if started or any(r["state"] != "COMPLETED" for r in out["runs"].values()):
            break
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.timeout(1200)  # about 150 s alone on 2 cores; several times that while another test process runs
def test_deployments_run_on_a_real_server(tmp_path):
    from tasks.qa import write_questions_file
    from tasks.samples import make_sample_videos

    lib = tmp_path / "lib"
    videos = make_sample_videos(lib, count=2, seconds=6.0, fps=4, width=160, height=120, seed=15)
    (lib / "broken.mp4").write_bytes(b"this is not a video")
    qfile = tmp_path / "questions.json"
    write_questions_file(videos, qfile, types=("bg_start", "bg_end"), root=lib)
    port, ray_port = _free_port(), _free_port()
    env = _deploy_env(tmp_path, lib, PREFECT_HOME=str(tmp_path / "prefect"),
                      PREFECT_API_URL=f"http://127.0.0.1:{port}/api", PREFECT_SERVER_ANALYTICS_ENABLED="false",
                      PREFECT_SERVER_UI_ENABLED="false", PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1",
                      PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="1",
                      RAY_AUTH_MODE="disabled", PREFECT_LOGGING_LEVEL="WARNING")
    procs: list[subprocess.Popen] = []

    def start(*cmd, **kw) -> subprocess.Popen:
        p = subprocess.Popen(list(cmd), cwd=tmp_path, env={**env, **kw}, start_new_session=True,
                             stdout=open(tmp_path / f"{Path(cmd[0]).name}-{len(procs)}.log", "w"), stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        start(str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port))
        start(str(BIN / "ray"), "start", "--head", f"--port={ray_port}", "--num-cpus=2", "--include-dashboard=false",
              "--block", "--disable-usage-stats", RAY_raylet_start_wait_time_s="120")
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "prefect-0.log").read_text()[-3000:]
            time.sleep(0.5)
        subprocess.run([str(BIN / "prefect"), "work-pool", "create", "vxl-pool", "--type", "process"], env=env,
                       check=True, capture_output=True, timeout=120)
        dep = subprocess.run([str(BIN / "vxl"), "deploy", "--prefect-file", str(REPO / "prefect.yaml"), "--json"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert dep.returncode == 0, dep.stdout + dep.stderr[-3000:]
        start(str(BIN / "prefect"), "worker", "start", "--pool", "vxl-pool", "--type", "process",
              RAY_ADDRESS=f"127.0.0.1:{ray_port}")
        cfg = {"timeout": 600, "phases": [
            [["index-corpus/nightly-index", {"max_frames": 6, "workers": 1}, "index-corpus-summary"],
             ["synth-vico/synth-vico", {"captioner": "ground-truth", "clip_seconds": 1.5, "k": "3", "workers": 1},
              "synth-vico-summary"],
             ["train-videoxl/train", {"options": {"out": str(tmp_path / "train"), "data": ["toy:1"], "steps": 1,
                                                  "batch_size": 1, "questions_per_sample": 1, "max_frames": 8},
                                      "local": True},
              "train-videoxl-summary"]],
            [["ask_library/ask-library", {"questions": ["What is the background colour?"], "max_new_tokens": 2,
                                          "workers": 1}, "ask-library-summary"],
             ["evaluate/evaluate", {"options": {"archive": env["VXL_ARCHIVE"], "model": "tiny",
                                                "questions_file": str(qfile), "videos_dir": str(lib), "workers": 1,
                                                "index": False}}, "evaluate-summary"]],
        ]}
        # the library holds one file that is not a video: the runs over it end "Completed with failures"
        partial = {"index-corpus/nightly-index", "synth-vico/synth-vico"}
        res = subprocess.run([sys.executable, "-c", RUNS, json.dumps(cfg)], env=env, capture_output=True, text=True,
                             timeout=1500)
        assert "RESULT " in res.stdout, res.stderr[-4000:]
        out = json.loads(res.stdout.split("RESULT ", 1)[1])
        print("seconds per run:", {n: round(r["seconds"], 1) for n, r in out["runs"].items()})
        logs = "\n".join(p.read_text()[-2500:] for p in tmp_path.glob("prefect-*.log"))
        assert out["schedules_active"] == [True]
        assert out["scheduled"] > 0, "the server's scheduler created no run of nightly-index\n" + logs
        for name, _, key in [run for phase in cfg["phases"] for run in phase]:
            r = out["runs"].get(name)
            want = "Completed with failures" if name in partial else "Completed"
            assert r is not None and r["state"] == "COMPLETED" and r["state_name"] == want, (name, r, logs)
            assert key in r["artifacts"] and r["artifact"], (name, r)
        index_md = out["runs"]["index-corpus/nightly-index"]["artifact"]
        assert "| 2 | 0 | 1 |" in index_md and "not_a_video" in index_md  # the failure is in the artifact
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
