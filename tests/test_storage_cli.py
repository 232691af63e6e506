"""`vxl archive ...` commands (flows/cli_archive.py) on a real local archive."""

from __future__ import annotations

import json

import pytest
import typer
from storage_factories import FP, make_memory, make_record, video_id
from test_storage_archive import _flip_in_files
from typer.testing import CliRunner

from flows import cli_archive
from storage import open_archive


@pytest.fixture
def app():
    a = typer.Typer()
    cli_archive.register(a)
    return a


@pytest.fixture
def filled(tmp_path):
    root = tmp_path / "arch"
    arch = open_archive(root)
    mems = {n: make_memory(seed=i, num_windows=3, tokens=(200, 201, 202), head_dim=32) for i, n in enumerate("ab")}
    for n, m in mems.items():
        arch.put(make_record(n), m)
    arch.put_failed(make_record("c", error_kind="DecodeError", error="broken file"))
    return root, mems


def run(app, *args):
    return CliRunner().invoke(app, list(args))


def test_ls_json(app, filled):
    root, mems = filled
    res = run(app, "archive", "ls", "--archive", str(root), "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["video_id"] for r in rows] == sorted(video_id(n) for n in "abc")
    by = {r["video_id"]: r for r in rows}
    a = by[video_id("a")]
    for k in ("video_id", "source_uri", "status", "error_kind", "error", "model_fingerprint",
              "num_windows", "num_vst_tokens", "kv_bytes"):
        assert k in a
    assert (a["status"], a["num_windows"], a["num_vst_tokens"], a["kv_bytes"], a["model_fingerprint"]) == (
        "indexed", 3, 603, mems["a"].nbytes, FP
    )
    c = by[video_id("c")]
    assert (c["status"], c["error_kind"], c["error"]) == ("failed", "DecodeError", "broken file")
    res = run(app, "archive", "ls", "--archive", str(root))
    assert res.exit_code == 0 and "3 row(s)" in res.stdout


def test_show_stats_rm_compact(app, filled):
    root, mems = filled
    res = run(app, "archive", "show", video_id("a")[:10], "--archive", str(root), "--json")
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)
    assert [w["index"] for w in d["windows"]] == [0, 1, 2]
    assert run(app, "archive", "show", "zzzz", "--archive", str(root)).exit_code == 2
    res = run(app, "archive", "stats", "--archive", str(root), "--json")
    st = json.loads(res.stdout)
    assert (st["videos"], st["indexed"], st["failed"], st["kv_bytes"]) == (3, 2, 1, 2 * mems["a"].nbytes)
    res = run(app, "archive", "rm", video_id("b"), "--archive", str(root), "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["removed"] == 1
    assert run(app, "archive", "rm", video_id("b"), "--archive", str(root)).exit_code == 2
    res = run(app, "archive", "compact", "--archive", str(root), "--json", "--older-than", "0", "--grace", "0")
    assert res.exit_code == 0, res.output
    assert open_archive(root).load_memory(video_id("a"), FP).equal(mems["a"])


def test_verify_reports_corruption(app, filled):
    root, mems = filled
    res = run(app, "archive", "verify", "--archive", str(root), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ok"] is True
    blob = mems["a"].window_kv[1].contiguous().view(-1).view(__import__("torch").uint8).numpy().tobytes()
    _flip_in_files(root, blob[200:264])
    res = run(app, "archive", "verify", "--archive", str(root), "--json")
    assert res.exit_code == 3
    rep = json.loads(res.stdout)
    assert [(p["video_id"], p["window"], p["kind"]) for p in rep["problems"]] == [(video_id("a"), 1, "checksum")]
    res = run(app, "archive", "verify", "--archive", str(root))
    assert res.exit_code == 3 and f"BAD {video_id('a')} window 1" in res.output
