"""`ask_library` (Prefect flow + Ray answer workers) and `vxl ask-library`.

One local Ray (2 CPUs, no dashboard) for the whole module. The archive holds two indexed sample
videos (one whose file was deleted after indexing), one video stored only for another model and
one with a corrupted blob: the job records both failures, answers the rest, exits 3, and a rerun
answers nothing twice. Answer workers disable the vision tower after loading the model
(`tasks.ask.forbid_vision`): any re-encoding attempt would fail those rows.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from test_ask_answer import index_in_process
from typer.testing import CliRunner

from storage import open_archive
from tasks.ask import Question, answer_video_questions

pytestmark = pytest.mark.slow

OTHER_FP = "e" * 64
MISMATCH_ID = "xxh3-128:" + "e" * 32
CORRUPT_ID = "xxh3-128:" + "c" * 32


@pytest.fixture(scope="module")
def ray_session():
    import ray

    from tasks.ray_runtime import ensure_ray

    info = ensure_ray(num_cpus=2, include_dashboard=False)
    yield info
    ray.shutdown()


@pytest.fixture(scope="module")
def lib(tmp_path_factory, sample_dir, tiny_vx):
    root = tmp_path_factory.mktemp("asklib")
    uri = str(root / "archive")
    arch = open_archive(uri)
    gone = root / "gone.mp4"
    shutil.copy(sample_dir / "sample_02.mp4", gone)
    good = [index_in_process(arch, tiny_vx, sample_dir / "sample_00.mp4"), index_in_process(arch, tiny_vx, gone)]
    gone.unlink()
    mem = arch.load_memory(good[0].video_id, tiny_vx.fingerprint)
    arch.put(dataclasses.replace(good[0], video_id=MISMATCH_ID, model_fingerprint=OTHER_FP, model_name="other",
                                 write_id=None), dataclasses.replace(mem, fingerprint=OTHER_FP))
    bad = dataclasses.replace(mem, sink=mem.sink * 3, window_kv=[kv * 3 for kv in mem.window_kv])
    arch.put(dataclasses.replace(good[0], video_id=CORRUPT_ID, write_id=None), bad)
    needle = bad.window_kv[0].contiguous().view(torch.uint8).numpy().tobytes()[64:128]
    hits = 0
    for p in (root / "archive" / "vst_kv.lance" / "data").rglob("*"):
        data = p.read_bytes() if p.is_file() else b""
        pos = data.find(needle)
        if pos >= 0:
            with open(p, "r+b") as f:
                f.seek(pos + 10)
                f.write(bytes([data[pos + 10] ^ 0xFF]))
            hits += 1
    assert hits >= 1  # every copy Lance holds of these bytes
    return uri, [r.video_id for r in good]


def _cli(*args):
    from flows.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_ask_library_flow_records_failures_and_is_idempotent(ray_session, lib, tiny_vx, tmp_path):
    uri, good = lib
    qfile = tmp_path / "questions.json"
    questions = [{"question": "What happens first?", "id": "q1"},
                 {"question": "Which shape appears?", "choices": ["a red circle", "a blue square"]}]
    qfile.write_text(json.dumps(questions))
    res = _cli("ask-library", "--archive", uri, "--questions", qfile, "--max-new-tokens", 8, "--json")
    assert res.exit_code == 3, res.output
    s = json.loads(res.stdout)
    assert (s["videos"], s["questions"], s["answered"], s["failed"], s["skipped"]) == (4, 2, 4, 4, 0)
    assert s["failed_videos"] == {MISMATCH_ID: "fingerprint_mismatch", CORRUPT_ID: "corrupt_blob"}
    assert s["fingerprint"] == tiny_vx.fingerprint

    arch = open_archive(uri)
    rows = arch.list_answers()
    assert len(rows) == 8 and len({r["key"] for r in rows}) == 8
    ok = [r for r in rows if r["status"] == "ok"]
    assert sorted({r["video_id"] for r in ok}) == sorted(good)
    # answers equal the model's answers from the same memories (greedy, CPU fp32)
    mem = arch.load_memory(good[1], tiny_vx.fingerprint)
    want = tiny_vx.answer(mem, "What happens first?", max_new_tokens=8).text
    got = [r for r in ok if r["video_id"] == good[1] and r["choices"] is None]
    assert [r["answer"] for r in got] == [want]
    mc = [r for r in ok if r["video_id"] == good[1] and r["choices"] is not None][0]
    assert json.loads(mc["scores"]) == tiny_vx.score_options(mem, "Which shape appears?",
                                                             ["a red circle", "a blue square"])
    failed = {r["video_id"]: r for r in rows if r["status"] == "failed"}
    assert OTHER_FP in failed[MISMATCH_ID]["error"] and tiny_vx.fingerprint in failed[MISMATCH_ID]["error"]
    assert "checksum" in failed[CORRUPT_ID]["error"]

    from prefect.artifacts import Artifact

    art = Artifact.get("ask-library-summary")
    assert art is not None and "| 4 | 2 | 4 | 0 | 4 |" in art.data and CORRUPT_ID in art.data

    # rerun: nothing answered twice, failures retried (and recorded again, same keys)
    res2 = _cli("ask-library", "--archive", uri, "--questions", qfile, "--max-new-tokens", 8, "--json",
                "--no-prefect")
    assert res2.exit_code == 3, res2.output
    s2 = json.loads(res2.stdout)
    assert (s2["answered"], s2["skipped"], s2["failed"]) == (0, 4, 4)
    assert len(open_archive(uri).list_answers()) == 8


def test_ask_library_where_filter_and_top_windows(ray_session, lib, tiny_vx):
    uri, good = lib
    res = _cli("ask-library", "--archive", uri, "--question", "What is at the end?", "--where",
               f"video_id = '{good[0]}'", "--top-windows", 1, "--max-new-tokens", 4, "--no-prefect", "--json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert (s["videos"], s["answered"], s["failed"]) == (1, 1, 0)
    row = [r for r in open_archive(uri).list_answers("question = 'What is at the end?'")][0]
    used = json.loads(row["windows_used"])
    n = open_archive(uri).get_video(good[0], tiny_vx.fingerprint).num_windows
    assert len(used) == 3 and used[0] == 0 and used[-1] == n - 1
    assert json.loads(row["settings"])["top_windows"] == 1


def test_ask_library_usage_errors(lib):
    uri, _ = lib
    assert _cli("ask-library", "--archive", uri, "--question", "  ", "--no-prefect").exit_code == 2
    res = _cli("ask-library", "--archive", uri, "--question", "q?", "--where", "no_such_column = 3", "--no-prefect")
    assert res.exit_code == 2 and "--where" in res.output
    assert _cli("ask-library", "--archive", uri, "--no-prefect").exit_code == 2


def test_answer_video_questions_loads_memory_once(lib, tiny_vx, monkeypatch):
    """Several questions on one video read its blobs once (pure function, no Ray)."""
    from storage import Archive

    uri, good = lib
    calls = []
    orig = Archive._read_blobs
    monkeypatch.setattr(Archive, "_read_blobs", staticmethod(lambda ds, rows: calls.append(len(rows)) or orig(ds, rows)))
    qs = [Question("What happens first?"), Question("And then?"), Question("Which?", ("red", "blue"))]
    rows = answer_video_questions(open_archive(uri), tiny_vx, good[0], qs, max_new_tokens=4)
    assert [r["status"] for r in rows] == ["ok"] * 3 and len(calls) == 1


def test_an_answer_worker_killed_between_videos_is_restarted_and_nothing_is_lost(ray_session, lib, tiny_vx):
    """SIGKILL of the only answer worker after its first video: the next video's call finds the
    process dead, Ray restarts it, and the video is asked again there (tasks.fanout); every answer
    equals the model's own answer from the stored memory."""
    import os
    import signal

    import psutil

    from tasks.ask_library import AskLibraryOptions, run_ask_library

    uri, good = lib
    question = "What colour is the background after the killing?"
    killed = []

    def kill_worker(vid, rows):
        if not killed:
            # this process's own Ray: its actors are our descendants ("ray::AskWorker..." titles)
            pids = [p.pid for p in psutil.Process().children(recursive=True)
                    if "ray::AskWorker" in " ".join(p.cmdline())]
            assert len(pids) == 1
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    s = run_ask_library(AskLibraryOptions(archive_uri=uri, questions=[question], workers=1, max_new_tokens=6,
                                          where=f"video_id IN ('{good[0]}', '{good[1]}')"), on_video=kill_worker)
    assert killed and s["worker_restarts"] == 1
    assert (s["videos"], s["answered"], s["failed"]) == (2, 2, 0)
    arch = open_archive(uri)
    for vid in good:
        (row,) = arch.list_answers(f"question = '{question}' AND video_id = '{vid}'")
        want = tiny_vx.answer(arch.load_memory(vid, tiny_vx.fingerprint), question, max_new_tokens=6).text
        assert row["status"] == "ok" and row["answer"] == want
