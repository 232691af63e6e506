"""The CLI never loses a file and never surprises a script (issue 15): read-only commands on a
missing archive, non-finite numbers, id prefixes, JSON errors, usage errors without Prefect or Ray."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from storage_factories import make_memory, make_record
from typer.testing import CliRunner

from flows.cli import app
from storage import AmbiguousVideoId, ArchiveNotFound, VideoNotFound, open_archive

REPO = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def json_error(res) -> dict:
    """The last stdout line as a JSON error object (stderr text is separate)."""
    line = res.stdout.strip().splitlines()[-1]
    out = json.loads(line)
    assert set(out) >= {"error", "error_kind"}, out
    return out


@pytest.fixture
def one_video(tmp_path):
    """An archive holding one memory with a real-looking id `xxh3-128:2b0b241c...`."""
    root = tmp_path / "arch"
    arch = open_archive(root)
    vid = "xxh3-128:2b0b241c" + "0" * 24
    rec = make_record("a")
    rec.video_id = vid
    mem = make_memory(num_windows=2)
    arch.put(rec, mem)
    rec2 = make_record("b")
    rec2.video_id = "xxh3-128:2b0b9999" + "1" * 24
    arch.put(rec2, make_memory(num_windows=2, seed=1))
    return root, vid


@pytest.mark.parametrize("cmd", [["archive", "ls"], ["archive", "verify"], ["archive", "stats"],
                                 ["archive", "show", "2b0b241c"], ["archive", "rm", "2b0b241c"],
                                 ["archive", "compact"],
                                 ["ask", "--video", "2b0b241c", "what?"]])
def test_read_only_commands_never_create_an_archive(cmd, tmp_path):
    missing = tmp_path / "typo"
    res = run(*cmd, "--archive", missing, "--json")
    assert res.exit_code in (1, 2), res.output
    err = json_error(res)
    assert str(missing) in err["error"] and "no archive" in err["error"]
    assert not missing.exists()  # no empty archive left at the mistyped path
    text = run(*cmd, "--archive", missing)
    assert text.exit_code == res.exit_code and "Traceback" not in text.output and not missing.exists()


def test_open_archive_create_false(tmp_path):
    with pytest.raises(ArchiveNotFound):
        open_archive(tmp_path / "nope", create=False)
    assert not (tmp_path / "nope").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArchiveNotFound):  # a folder without an archive in it
        open_archive(tmp_path / "empty", create=False)
    (tmp_path / "file").write_text("x")
    res = run("archive", "ls", "--archive", tmp_path / "file", "--json")
    assert res.exit_code == 1 and "is a file" in json_error(res)["error"]


def test_id_prefixes_work_everywhere(one_video):
    root, vid = one_video
    arch = open_archive(root, create=False)
    for text in (vid, "xxh3-128:2b0b241c", "2b0b241c", "2B0B241C", " 2b0b241c0 "):
        assert arch.resolve_video_id(text) == vid, text
    with pytest.raises(AmbiguousVideoId) as exc:
        arch.resolve_video_id("2b0b")  # both ids start with 2b0b
    assert len(exc.value.matches) == 2
    with pytest.raises(VideoNotFound):
        arch.resolve_video_id("ffff0000")
    with pytest.raises(VideoNotFound):
        arch.resolve_video_id("2b0b%")  # never a LIKE wildcard

    from tasks.ask import resolve_video_id

    assert resolve_video_id(arch, "2b0b241c") == vid  # `vxl ask --video` uses the same rules
    show = run("archive", "show", "2b0b241c", "--archive", root, "--json")
    assert show.exit_code == 0, show.output
    assert json.loads(show.stdout)[0]["video_id"] == vid
    amb = run("archive", "show", "2b0b", "--archive", root, "--json")
    assert amb.exit_code == 2 and "2 videos" in json_error(amb)["error"]
    rm = run("archive", "rm", "2b0b241c", "--archive", root, "--json")  # once needed the exact id
    assert rm.exit_code == 0, rm.output
    assert json.loads(rm.stdout)["video_id"] == vid
    assert [r.video_id for r in open_archive(root).list_videos()] == ["xxh3-128:2b0b9999" + "1" * 24]


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_validation_rejects_non_finite_numbers(bad, tmp_path):
    from tasks.index import UsageError, make_options
    from tasks.samples import plan_sample_video
    from tasks.vico import VicoOptions, VicoUsageError

    with pytest.raises(UsageError, match="fps"):
        make_options("tiny", fps=bad).validate()
    with pytest.raises(UsageError, match="decode_timeout"):
        make_options("tiny", decode_timeout_s=bad).validate()
    for field, flag in (("fps", "--fps"), ("clip_seconds", "--clip-seconds"), ("decode_timeout_s", "--decode-timeout"),
                        ("min_gap_s", "--min-gap"), ("val_fraction", "--val-fraction")):
        with pytest.raises(VicoUsageError, match=f"^{flag} must be a finite number"):
            VicoOptions(source=str(tmp_path), out=str(tmp_path / "o"), captioner="ground-truth",
                        **{field: bad}).validate()
    with pytest.raises(ValueError, match="finite"):
        plan_sample_video(seconds=bad)


@pytest.mark.parametrize(("cmd", "kind"), [
    (["index", "{src}", "--archive", "{tmp}/a", "--fps", "inf"], "usage"),
    (["index", "{tmp}/no_such_folder", "--archive", "{tmp}/a"], "usage"),
    (["index", "{src}", "--archive", "{file}"], "usage"),
    (["vico", "{src}", "--out", "{tmp}/v", "--fps", "nan"], "usage"),
    (["vico", "{src}", "--out", "{tmp}/v", "--captioner-opt", "novalue"], "usage"),
    (["ask-library", "--archive", "{tmp}/a", "--questions", "{badq}"], "usage"),
    (["eval", "--archive", "{tmp}/a", "--questions", "{badq}"], "usage"),
    (["train", "--out", "{tmp}/t", "--lr", "inf"], "usage"),
    (["demo", "--count", "0", "--out", "{tmp}/d"], "usage"),
    (["sample-videos", "{tmp}/s", "--seconds", "inf"], "usage"),
    (["archive", "compact", "--archive", "{tmp}/a", "--grace", "inf"], "usage"),
    (["archive", "ls", "--no-such-option"], "usage"),
])
def test_every_command_reports_errors_as_json(cmd, kind, tmp_path):
    """Under --json, every command's error is one JSON object on stdout with `error` and
    `error_kind`, the exit status is the usage one, and nothing wrote where it should not."""
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "afile").write_text("not an archive")
    badq = tmp_path / "q.jsonl"
    badq.write_text('{"not_a_question": 1}\n')
    if cmd[:2] == ["archive", "compact"]:
        open_archive(tmp_path / "a")
    args = [a.format(src=src, tmp=tmp_path, file=tmp_path / "afile", badq=badq) for a in cmd] + ["--json"]
    res = run(*args)
    assert res.exit_code == 2, (args, res.output)
    err = json_error(res)
    assert err["error_kind"] == kind and err["error"], err
    assert "Traceback" not in res.output


def test_usage_errors_start_neither_prefect_nor_ray(tmp_path):
    """A usage error is found before Prefect's engine or Ray start (a fresh interpreter, so nothing
    else started them): no temporary Prefect server, no Ray, within a few seconds."""
    (tmp_path / "q.jsonl").write_text("{}\n")
    code = f"""
import sys
from typer.testing import CliRunner
from flows.cli import app
for args in (["index", "{tmp_path}", "--archive", "{tmp_path}/a", "--fps", "inf"],
             ["ask-library", "--archive", "{tmp_path}/a", "--questions", "{tmp_path}/q.jsonl"],
             ["eval", "--archive", "{tmp_path}/a", "--questions", "{tmp_path}/q.jsonl"],
             ["vico", "{tmp_path}", "--out", "{tmp_path}/v", "--k", "zero"]):
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, (args, r.output)
    assert "Traceback" not in r.output, r.output
started = [m for m in ("prefect.server.api.server", "ray._private.worker") if m in sys.modules
           and (m != "ray._private.worker" or sys.modules["ray"].is_initialized())]
print("STARTED", started)
"""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "ph")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "STARTED []" in out.stdout, out.stdout
    assert not (tmp_path / "ph").exists() or not any((tmp_path / "ph").rglob("*.db"))  # no Prefect database


def test_archive_show_summarises_the_plan(one_video):
    """`archive show` prints a summary of the plan (a 30-minute video's plan is ~89 KB of JSON);
    `--full` prints all of it."""
    root, vid = one_video
    arch = open_archive(root, create=False)
    rec = arch.get_video(vid)
    plan = {"planner": "dynamic", "tokens_per_frame": 144,
            "windows": [[i * 8, i * 8 + 8, 16 if i % 3 else 4] for i in range(200)],
            "params": {"index_settings": {"fps": 1.0, "max_frames": 1600}, "frame_cap": {"wanted": 1800, "kept": 1600,
                                                                                         "seconds_per_frame": 1.125}},
            "extras": {"similarity": [0.5] * 1600}}
    rec.plan = json.dumps(plan)
    arch.put(rec, make_memory(num_windows=2))
    summary = json.loads(run("archive", "show", vid, "--archive", root, "--json").stdout)[0]["plan"]
    assert summary == {"planner": "dynamic", "windows": 200, "ratios": "4x: 67, 16x: 133", "frames": 1600,
                       "fps": 1.0, "max_frames": 1600,
                       "frame_cap": {"wanted": 1800, "kept": 1600, "seconds_per_frame": 1.125}}
    full = json.loads(run("archive", "show", vid, "--archive", root, "--json", "--full").stdout)[0]["plan"]
    assert json.loads(full) == plan
    text = run("archive", "show", vid, "--archive", root)
    assert text.exit_code == 0 and "ratios 4x: 67, 16x: 133" in text.stdout and len(text.stdout) < 5000


def test_plan_plot_stays_readable_at_200_windows(one_video, tmp_path):
    """At 200+ windows the bars are too narrow for `r=N` labels: only bars wide enough are labelled
    (the labels once smeared into each other) and a colour key names every ratio."""
    from flows.plan_plot import MIN_LABEL_PX, draw_plan, plot_plan

    root, vid = one_video
    rec = open_archive(root, create=False).get_video(vid)
    windows = [[i * 8, i * 8 + 8, (4, 8, 16)[i % 3]] for i in range(198)] + [[1584, 1800, 2]]  # one wide window
    rec.plan = json.dumps({"planner": "dynamic", "tokens_per_frame": 144, "windows": windows, "params": {},
                           "extras": {}})
    rec.sampled_times = [float(i) for i in range(1800)]
    fig = draw_plan(rec)
    ax = fig.axes[-1]
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["r=2"]  # 8 s of 1800 s is ~5 px wide: unlabelled; the 216 s window is labelled
    key = [t.get_text() for t in ax.get_legend().get_texts()]
    assert key == ["ratio 2 (1 windows)", "ratio 4 (66 windows)", "ratio 8 (66 windows)", "ratio 16 (66 windows)"]
    assert MIN_LABEL_PX > 8 * fig.get_figwidth() * fig.dpi / 1800
    out = plot_plan(rec, tmp_path / "plan.png")
    assert out.stat().st_size > 1000
