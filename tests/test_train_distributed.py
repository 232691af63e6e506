"""Training on Ray Train (issue 12), at toy size: 2 DDP workers (gloo, CPU) train the same parameters
as one process with the same global batch; a `vxl train` killed with SIGKILL resumes and continues
the loss curve of an uninterrupted run; a finished run is a no-op; worker failures surface as
`TrainError(kind="train")`; the CLI's usage errors start neither Ray nor Prefect; `--json`; the
Prefect flow's summary artifact.

Sizes: 4 toy videos of at most 16 frames, global batch 2, 6 steps, 2 questions per sample. The
slow part is starting Ray Train's workers (each imports torch and builds the toy model).
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

from tasks.train import TrainConfig, TrainError

REPO = Path(__file__).resolve().parents[1]
STEPS = 6
# everything that decides the trained parameters (checkpoint_every only decides when they are saved)
RUN = dict(data=["toy:4"], steps=STEPS, batch_size=2, checkpoint_every=2, max_frames=16, questions_per_sample=2,
           warmup_steps=0, lr=1e-3, seed=0)
CLI_RUN = ["--data", "toy:4", "--steps", str(STEPS), "--batch-size", "2", "--checkpoint-every", "2",
           "--max-frames", "16", "--questions-per-sample", "2", "--warmup-steps", "0", "--lr", "1e-3", "--seed", "0"]
# 2 workers vs 1 process, both with one CPU thread per process (as a Ray worker with one CPU): the same
# per-sample gradients; DDP all-reduces the two workers' gradients (divided by 2) where one process
# accumulates the two halves into .grad, the same float32 additions, so the parameters are equal
# (bitwise, on this machine). The tolerance leaves room for float summation order in the all-reduce
# on other backends/bucketings: AdamW divides by sqrt(v), which amplifies rounding where a gradient
# is close to 0 (with the reference on 2 threads a few elements differed by 1.6e-6 after 6 steps).
# A wrong split or a missing all-reduce moves parameters by a whole update (about lr = 1e-3). The
# gradient norms (logged after the all-reduce, before clipping) catch scaling errors, which Adam's
# normalised update would hide.
ATOL, RTOL = 1e-6, 1e-5


def _env() -> dict:
    env = dict(os.environ)
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO),
               OMP_NUM_THREADS="1")  # the reference's numerics (one thread)
    return env


def test_workers_report_to_ray_only_at_checkpoint_steps(tmp_path):
    """Ray Train V2 takes one report per worker per controller poll (a result queue of size 1,
    polled every 2 s), so a report every step held training to one step per 2 s. The reporter
    logs every step but calls Ray's report (`send`) only at checkpoint steps and the last step."""
    from tasks.train_ray import LOG_NAME, make_reporter

    cfg = TrainConfig(out=str(tmp_path), steps=7, checkpoint_every=3)
    sent = []
    report = make_reporter(cfg, rank=0, world_size=1, send=lambda line, ckpt: sent.append((line["step"], ckpt)))
    for step in range(1, 8):
        report({"step": step, "loss": 1.0}, "ckpt" if step in (3, 6, 7) else None)
    assert sent == [(3, "ckpt"), (6, "ckpt"), (7, "ckpt")]
    lines = [json.loads(x) for x in (tmp_path / LOG_NAME).read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 8)) and all(x["peak_rss_mb"] > 0 for x in lines)
    never = TrainConfig(out=str(tmp_path / "b"), steps=4, checkpoint_every=0)
    (tmp_path / "b").mkdir()
    sent.clear()
    report = make_reporter(never, rank=0, world_size=1, send=lambda line, ckpt: sent.append(line["step"]))
    for step in range(1, 5):
        report({"step": step}, None)
    assert sent == [4]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train-cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache):
    """The uninterrupted one-process run (`local`, world 1): the reference of every other run."""
    import torch

    from tasks.train_ray import run_training

    cfg = TrainConfig(out=str(tmp_path_factory.mktemp("ref") / "run"), cache_dir=str(cache), **RUN)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Ray Train worker with one CPU (OMP_NUM_THREADS=1)
    try:
        return cfg, run_training(cfg, local=True)
    finally:
        torch.set_num_threads(threads)


def _weights(folder: str | Path) -> dict:
    from model.checkpoint import read_safetensors

    return read_safetensors(Path(folder))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_ray_workers_train_the_same_parameters_as_one_process(ray_session, reference, tmp_path):
    import torch

    from model.checkpoint import to_checkpoint_keys
    from tasks.train import fresh_toy_model
    from tasks.train_ray import POINTER_NAME, read_log, run_training

    ref_cfg, ref = reference
    cfg = ref_cfg.model_copy(update=dict(out=str(tmp_path / "w2"), num_workers=2))
    res = run_training(cfg)
    assert res["steps"] == STEPS and not res["noop"] and res["resumed_from"] == 0
    assert res["model_dir"] == str((tmp_path / "w2" / "final").resolve())
    assert [h["step"] for h in res["history"]] == list(range(1, STEPS + 1))
    for a, b in zip(res["history"], ref["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)

    mine, want = _weights(res["model_dir"]), _weights(ref["model_dir"])
    assert mine.keys() == want.keys()
    for name, w in want.items():  # every tensor (the default --trainable trains every part)
        torch.testing.assert_close(mine[name], w, atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}")
    start = to_checkpoint_keys(fresh_toy_model(0).model.state_dict())
    moved = max(float((want[k] - v).abs().max()) for k, v in start.items() if k in want)
    assert moved > 1e-3, "the parameters must move for the comparison to mean anything"

    log, ref_log = read_log(cfg.out), read_log(ref_cfg.out)
    assert [x["step"] for x in log] == list(range(1, STEPS + 1)) and {x["world_size"] for x in log} == {2}
    for a, b in zip(log, ref_log, strict=True):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5), a["step"]
    assert all(x["peak_rss_mb"] > 0 and x["samples_per_s"] > 0 for x in log)
    # Ray Train's run folder records pointers to our checkpoints (no second copy of the weights)
    pointer = json.loads((Path(res["ray_checkpoint"]) / POINTER_NAME).read_text())
    assert pointer == {"path": str((tmp_path / "w2" / "checkpoints" / f"step_{STEPS:06d}").resolve()), "step": STEPS}
    assert sorted(p.name for p in Path(res["ray_checkpoint"]).iterdir()) == [POINTER_NAME]

    t0 = time.perf_counter()
    again = run_training(cfg)  # finished: reported again, Ray not started
    assert again["noop"] and again["history"] == res["history"] and again["config_changes"] == {}
    assert time.perf_counter() - t0 < 15
    changed = run_training(cfg.model_copy(update=dict(lr=2e-3)))
    assert changed["noop"] and changed["config_changes"] == {"lr": [1e-3, 2e-3]}
    # killed after the last checkpoint, before final/ was written: the rerun writes final/ from it
    import shutil

    shutil.rmtree(res["model_dir"])
    assert run_training(cfg)["noop"] and (Path(res["model_dir"]) / "config.json").is_file()
    restored = _weights(res["model_dir"])
    assert all(torch.equal(restored[k], mine[k]) for k in mine)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_then_rerun_resumes_the_same_loss_curve(reference, tmp_path):
    """`vxl train` (one local worker) killed after its step-2 checkpoint; the rerun resumes from the
    newest checkpoint and its losses equal the uninterrupted run's."""
    _, ref = reference
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "flows.cli", "train", "--out", str(out), *CLI_RUN, "--local", "--no-flow", "--json"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marker = out / "checkpoints" / "step_000002" / "trainer_state.pt"
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, f"training exited early: {proc.communicate()[1].decode()[-2000:]}"
        assert time.monotonic() < deadline, "no step-2 checkpoint in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "final").exists(), "the run must be killed before it finished"
    from tasks.train import checkpoint_dirs

    newest = int(checkpoint_dirs(out)[-1].name.split("_")[1])
    assert 2 <= newest < STEPS

    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["resumed_from"] == newest and res["steps"] == STEPS and not res["noop"]
    got = {h["step"]: h["loss"] for h in res["history"]}
    want = {h["step"]: h["loss"] for h in ref["history"]}
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(3, STEPS + 1):
        assert got[step] == pytest.approx(want[step], abs=1e-6), step
    assert Path(res["model_dir"]) == (out / "final").resolve() and (out / "final" / "config.json").is_file()


@pytest.mark.timeout(120)
def test_cli_usage_errors_exit_2_before_ray_or_prefect(tmp_path):
    code = (
        "import sys, json\n"
        "from typer.testing import CliRunner\n"
        "from flows.cli import app\n"
        "out = []\n"
        "for args in (['--steps', '0'], ['--workers', '2', '--batch-size', '3'], ['--steps', '0', '--json'],\n"
        "             ['--curriculum', '5:2,4'], ['--trainable', 'llm,eyes'], ['--question-types', 'bg_start,colour'],\n"
        "             ['--objective', 'pixels'], ['--objective', 'frames', '--trainable', 'llm']):\n"
        f"    r = CliRunner().invoke(app, ['train', '--out', {str(tmp_path / 'run')!r}, *args])\n"
        "    out.append([r.exit_code, r.stdout, r.stderr])\n"
        "out.append([CliRunner().invoke(app, ['--help']).exit_code, CliRunner().invoke(app, ['--help']).stdout, ''])\n"
        "print(json.dumps({'runs': out, 'heavy': [m for m in ('ray', 'prefect') if m in sys.modules]}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=100)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["heavy"] == []
    (steps, workers, as_json, cur, parts, qtypes, objective, frames_llm, help_) = res["runs"]
    assert help_[0] == 0 and " train " in help_[1]
    assert steps[0] == 2 and steps[1] == "" and steps[2].strip().splitlines() == [steps[2].strip()]
    assert "--steps" in steps[2]
    assert workers[0] == 2 and "--batch-size 3 is not a multiple of --workers 2" in workers[2]
    assert as_json[0] == 2 and json.loads(as_json[1])["error_kind"] == "usage" and "--steps" in json.loads(as_json[1])["error"]
    assert cur[0] == 2 and "--curriculum" in cur[2]
    assert parts[0] == 2 and "--trainable" in parts[2]
    assert qtypes[0] == 2 and "--question-types ['bg_start', 'colour']" in qtypes[2]
    assert objective[0] == 2 and "--objective must be one of" in objective[2]
    assert frames_llm[0] == 2 and "--objective frames trains the vision tower" in frames_llm[2]
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(120)
def test_worker_failure_is_a_train_error_and_resources_are_checked(ray_session, cache, tmp_path, monkeypatch):
    from ray.train import WorkerGroupError
    from ray.train.torch import TorchTrainer

    from tasks.train_ray import describe_failure, run_training

    cfg = TrainConfig(out=str(tmp_path / "run"), cache_dir=str(cache), **RUN)
    with pytest.raises(TrainError, match="needs 3 CPUs") as e:
        run_training(cfg.model_copy(update=dict(num_workers=3, batch_size=3)))
    assert e.value.kind == "usage"
    with pytest.raises(TrainError, match="fsdp is not supported"):
        run_training(cfg.model_copy(update=dict(num_workers=2, strategy="fsdp")))

    def fail(self):
        raise WorkerGroupError("snippet", {1: FloatingPointError("step 3: loss nan on sample toy-2 (toy:4)"),
                                           0: ValueError("peer closed\nmore lines")})

    monkeypatch.setattr(TorchTrainer, "fit", fail)
    with pytest.raises(TrainError) as e:
        run_training(cfg)
    assert e.value.kind == "train"
    assert "worker rank 0: ValueError: peer closed; worker rank 1: FloatingPointError: step 3: loss nan" in str(e.value)
    assert isinstance(e.value.__cause__, WorkerGroupError)
    assert describe_failure(RuntimeError("x\ny")) == "RuntimeError: x"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cli_json_on_a_finished_run_through_the_flow(reference, tmp_path, monkeypatch):
    """`vxl train --json` (Prefect flow, ephemeral) on the finished reference run: reported again,
    nothing trained, one JSON object on stdout, the summary artifact."""
    from typer.testing import CliRunner

    from flows.cli import app

    ref_cfg, ref = reference
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        r = CliRunner().invoke(app, ["train", "--out", ref_cfg.out, *CLI_RUN, "--json"])
        assert r.exit_code == 0, r.output
        res = json.loads(r.stdout)
        assert {"final_loss", "steps", "samples_per_s", "model_dir", "history"} <= res.keys()
        assert res["noop"] and res["steps"] == STEPS and res["final_loss"] == ref["final_loss"]
        assert res["history"] == ref["history"] and res["model_dir"] == ref["model_dir"]

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        with get_client(sync_client=True) as client:
            arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["train-videoxl-summary"])))
        assert arts and ref["model_dir"] in arts[-1].data and f"| steps | {STEPS} |" in arts[-1].data

    r = CliRunner().invoke(app, ["train", "--out", ref_cfg.out, *CLI_RUN, "--no-flow"])
    assert r.exit_code == 0 and "already trained: 6 steps" in r.stdout
    assert f"vxl index VIDEOS --model {ref['model_dir']}" in r.stdout


def test_worker_config_paths_are_absolute_and_train_errors_pickle(tmp_path, monkeypatch):
    """Ray Train workers run in their own folder and ship their errors back pickled: a relative
    `--model model/weights/toy` was 'neither toy-init nor a checkpoint folder' in the workers, and
    that TrainError could not be unpickled, so the driver only saw WorkerHealthCheckFailedError."""
    import pickle

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    cfg = TrainConfig(out="run", model="ckpt", data=["toy:4", "vids", "llava.json"], video_root="vids",
                      cache_dir="c")
    ab = cfg.with_absolute_paths()
    assert ab.model == str(tmp_path / "ckpt") and ab.out == str(tmp_path / "run")
    assert ab.data == ["toy:4", str(tmp_path / "vids"), str(tmp_path / "llava.json")]
    assert (ab.video_root, ab.cache_dir) == (str(tmp_path / "vids"), str(tmp_path / "c"))
    assert TrainConfig(out="r", model="toy-init:image_size=32").with_absolute_paths().model == "toy-init:image_size=32"
    err = pickle.loads(pickle.dumps(TrainError("usage", "--model 'x' is neither")))
    assert isinstance(err, TrainError) and err.kind == "usage" and str(err) == "--model 'x' is neither"
