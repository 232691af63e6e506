"""The `synth_vico` Prefect flow fanned out over a local Ray, and the `vxl vico` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def flow_videos(tmp_path_factory) -> Path:
    from tasks.samples import make_sample_videos

    out = tmp_path_factory.mktemp("vico_flow")
    make_sample_videos(out, count=3, seconds=20.0, fps=4, width=160, height=120, seed=21)
    (out / "broken.mp4").write_bytes(b"")
    return out


ARGS = dict(captioner="ground-truth", extractor="heuristic", seed=3, clip_seconds=3.0, k="3-4")


@pytest.mark.slow
def test_flow_on_ray_matches_in_process(flow_videos, tmp_path):
    from flows.synth_vico import synth_vico
    from tasks.ray_runtime import ensure_ray, shutdown_if_started
    from tasks.vico import VicoOptions, plan_jobs, run_local, write_outputs

    info = ensure_ray(num_cpus=2, include_dashboard=False)
    try:
        state = synth_vico(source=str(flow_videos), out=str(tmp_path / "ray"), samples_per_video=3,
                           val_fraction=0.5, workers=2, return_state=True, **ARGS)
        summary = state.result()
    finally:
        shutdown_if_started(info)
    assert summary["run"]["mode"] == "actors"
    assert summary["videos"] == {"total": 4, "with_samples": 3, "skipped": 1}
    assert summary["skipped"][0]["video"] == "broken.mp4" and summary["skipped"][0]["kind"] == "decode_failed"
    assert summary["exit_code"] == 3
    # one video failed to decode: the run says so in its state (issue 15), not a green Completed
    assert state.is_completed() and state.name == "Completed with failures", (state.name, state.message)
    # no sample written at all: Failed, the summary still in the state
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "broken.mp4").write_bytes(b"")
    none = synth_vico(source=str(only_bad), out=str(tmp_path / "none"), workers=0, return_state=True, **ARGS)
    assert none.is_failed() and none.result(raise_on_failure=False)["samples_written"]["total"] == 0
    assert json.loads((tmp_path / "ray" / "summary.json").read_text())["samples_written"] == summary["samples_written"]
    # same as the pure pipeline in this process, byte for byte
    opts = VicoOptions(source=str(flow_videos), out=str(tmp_path / "local"), samples_per_video=3, val_fraction=0.5,
                       workers=0, **ARGS)
    jobs, _ = plan_jobs(opts)
    write_outputs(run_local(jobs, opts), opts)
    for name in ("train.json", "val.json", "summary.json"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def test_cli_vico(flow_videos, tmp_path):
    from flows.cli import app

    runner = CliRunner()
    src = tmp_path / "src"
    src.mkdir()
    for p in flow_videos.glob("sample_0*"):
        (src / p.name).write_bytes(p.read_bytes())
    res = runner.invoke(app, ["vico", str(src), "--out", str(tmp_path / "out"), "--captioner", "ground-truth",
                              "--extractor", "heuristic", "--clip-seconds", "3", "--k", "3", "--workers", "0",
                              "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["samples_written"]["total"] == 6 and summary["run"]["mode"] == "local"
    assert (tmp_path / "out" / "train.json").is_file()
    res = runner.invoke(app, ["vico", str(src), "--out", str(tmp_path / "o2"), "--captioner", "vila"])
    assert res.exit_code == 2 and "--captioner must be one of" in res.output
    res = runner.invoke(app, ["vico", str(src), "--out", str(tmp_path / "o2"), "--k", "12"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["vico", str(src), "--out", str(tmp_path / "o2"), "--extractor", "openai-compatible"])
    assert res.exit_code == 2 and "off until configured" in res.output
