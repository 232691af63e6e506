"""The index pipeline end to end: real H.264 files, real Ray (local, 2 CPUs, shared by this module),
the tiny model, the archive. Bad input, worker and driver kills, the Prefect flow and its artifact,
the CLI's exit status."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.index import IndexInfraError, UsageError, make_options, run_index

REPO = Path(__file__).resolve().parents[1]
OPTS = dict(max_frames=6, workers=1, decode_timeout_s=60.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """3 good 4 s samples + every kind of bad file (tasks.samples.make_bad_files)."""
    from tasks.samples import make_bad_files, make_sample_videos

    root = tmp_path_factory.mktemp("corpus")
    make_sample_videos(root / "good", count=3, seconds=4.0, seed=3)
    make_bad_files(root / "bad")
    return root


def _kinds(report) -> dict[str, str]:
    return {Path(f["source_uri"]).name: f["error_kind"] for f in report.failed}


def test_bad_corpus_then_rerun_is_a_noop(ray_session, corpus, tmp_path):
    from storage import open_archive
    from tasks.video import discover

    # one more good file, deleted after discovery ("deleted during the run")
    shutil.copy(corpus / "good" / "sample_00.mp4", tmp_path / "doomed.mp4")
    with open(tmp_path / "doomed.mp4", "ab") as f:
        f.write(b"\0")  # other content than sample_00, so another video id
    srcs = discover([str(corpus), str(tmp_path / "doomed.mp4")])
    (tmp_path / "doomed.mp4").unlink()
    uri = str(tmp_path / "archive")
    rep = run_index(srcs, uri, make_options("tiny", **OPTS), reuse_workers=True)

    assert rep.exit_code == 3
    good = {"sample_00.mp4", "sample_01.mp4", "sample_02.mp4", "one_frame.mp4", "clip ü ß.mp4"}
    assert {Path(v["source_uri"]).name for v in rep.indexed} == good
    assert _kinds(rep) == {
        "empty.mp4": "empty_file", "not_a_video.mp4": "not_a_video", "truncated.mp4": "truncated",
        "truncated_no_moov.mp4": "truncated", "audio_only.mp4": "no_video_stream", "doomed.mp4": "missing_file",
    }
    for f in rep.failed:
        assert f["error"] and Path(f["source_uri"]).name in f["error"]
    assert rep.frames == sum(v["frames"] for v in rep.indexed) and rep.kv_bytes > 0

    arch = open_archive(uri)
    fp = rep.fingerprint
    assert arch.indexed_ids(fp) == {v["video_id"] for v in rep.indexed}
    # the deleted file could not be digested: reported, not stored
    assert arch.failed_ids(fp) == {f["video_id"] for f in rep.failed if f["video_id"]}
    assert len(arch.failed_ids(fp)) == 5
    rec = arch.get_video(rep.indexed[0]["video_id"], fp)
    plan = json.loads(rec.plan)
    assert plan["planner"] == "dynamic" and "similarity" in plan["extras"]
    emb, spans = arch.window_embeddings(rec.video_id, fp)
    assert emb is not None and emb.shape[0] == len(spans) == rec.num_windows
    assert arch.verify().ok

    again = run_index([str(corpus)], uri, make_options("tiny", **OPTS), reuse_workers=True)
    assert again.indexed == [] and again.failed == [] and again.exit_code == 0
    reasons = {Path(s["source_uri"]).name: s["reason"] for s in again.skipped}
    assert {n for n, r in reasons.items() if r == "indexed"} == good
    assert {n for n, r in reasons.items() if r == "failed_before"} == set(_kinds(rep)) - {"doomed.mp4"}
    assert len(arch.list_videos()) == 10  # no duplicates
    # the samples' ground-truth JSON files are reported as ignored, not silently dropped
    others = sorted(str(p) for p in corpus.rglob("*") if p.is_file() and p.suffix != ".mp4")
    assert others and again.to_json()["ignored"] == {
        "not a video extension (.json)": {"count": len(others), "examples": others[:3]}}


def test_fixed_chunking_frames_and_retry_failed(ray_session, corpus, tmp_path):
    from storage import open_archive

    uri = str(tmp_path / "archive")
    srcs = [str(corpus / "good" / "sample_01.mp4"), str(corpus / "bad" / "empty.mp4")]
    opts = make_options("tiny", chunking="fixed", ratio=4, frames=5, workers=1)
    rep = run_index(srcs, uri, opts, reuse_workers=True)
    assert [v["frames"] for v in rep.indexed] == [5] and _kinds(rep) == {"empty.mp4": "empty_file"}
    rec = open_archive(uri).get_video(rep.indexed[0]["video_id"], rep.fingerprint)
    plan = json.loads(rec.plan)
    assert plan["planner"] == "fixed" and {w[2] for w in plan["windows"]} == {4}
    assert len(rec.sampled_frames) == 5
    rep2 = run_index(srcs, uri, make_options("tiny", chunking="fixed", ratio=4, frames=5, workers=1,
                                             retry_failed=True), reuse_workers=True)
    assert rep2.indexed == [] and _kinds(rep2) == {"empty.mp4": "empty_file"}
    assert [s["reason"] for s in rep2.skipped] == ["indexed"]


def test_usage_and_infra_errors(tmp_path):
    with pytest.raises(UsageError, match="--fps"):
        run_index([str(tmp_path)], str(tmp_path / "a"), make_options("tiny", fps=0))
    with pytest.raises(UsageError, match="not found"):
        run_index([str(tmp_path / "nope")], str(tmp_path / "a"), make_options("tiny"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(IndexInfraError, match="cannot open the archive"):
        run_index([str(tmp_path)], str(tmp_path / "file" / "archive"), make_options("tiny"))


def test_cli_exit_status_usage_and_infra(tmp_path, corpus):
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["index", str(tmp_path / "missing"), "--archive", str(tmp_path / "a")])
    assert r.exit_code == 2 and "not found" in r.output
    r = runner.invoke(app, ["index", str(corpus), "--archive", str(tmp_path / "a"), "--chunking", "weird"])
    assert r.exit_code == 2 and "--chunking" in r.output
    (tmp_path / "file").write_text("x")
    r = runner.invoke(app, ["index", str(corpus), "--archive", str(tmp_path / "file" / "x"), "--no-flow"])
    assert r.exit_code == 1 and "cannot open the archive" in r.output


@pytest.mark.slow
def test_worker_sigkill_mid_run_still_indexes_everything(ray_session, corpus, tmp_path):
    from tasks.samples import make_sample_videos

    vids = tmp_path / "vids"
    make_sample_videos(vids, count=4, seconds=4.0, seed=11)
    killed: list[int] = []

    def kill_after_first(p):
        if p.event == "indexed" and not killed and p.worker_pid:
            killed.append(p.worker_pid)
            os.kill(p.worker_pid, signal.SIGKILL)  # the actor has the next video queued

    rep = run_index([str(vids)], str(tmp_path / "archive"), make_options("tiny", **OPTS), progress=kill_after_first,
                    reuse_workers=True)
    assert killed and rep.worker_restarts >= 1
    assert len(rep.indexed) == 4 and rep.failed == [] and rep.exit_code == 0


@pytest.mark.slow
def test_driver_sigkill_then_rerun_indexes_only_the_rest(ray_session, tmp_path):
    from storage import open_archive
    from tasks.index import shutdown_workers
    from tasks.samples import make_sample_videos

    shutdown_workers()  # the subprocess's actor needs a CPU of the shared Ray
    vids = tmp_path / "vids"
    make_sample_videos(vids, count=5, seconds=4.0, seed=21)
    uri = str(tmp_path / "archive")
    address = ray_session.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "flows.cli", "index", str(vids), "--archive", uri, "--max-frames", "6",
           "--workers", "1", "--ray-address", address, "--json", "--no-flow"]
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    arch = open_archive(uri)
    deadline = time.monotonic() + 180
    n_before = 0
    while time.monotonic() < deadline and proc.poll() is None:
        rows = [r for r in arch.list_videos() if r.status == "indexed"]
        if rows:
            n_before = len(rows)
            proc.kill()  # SIGKILL the driver mid-run
            break
        time.sleep(0.2)
    proc.wait(30)
    assert 1 <= n_before < 5, "the driver finished before it could be killed"
    before = {r.video_id for r in arch.list_videos() if r.status == "indexed"}

    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rep = json.loads(out.stdout)
    indexed_now = {v["video_id"] for v in rep["indexed"]}
    assert indexed_now.isdisjoint(before) and len(indexed_now | before) == 5
    assert {s["video_id"] for s in rep["skipped"]} == before
    rows = arch.list_videos()
    assert len(rows) == 5 and len({r.video_id for r in rows}) == 5  # no duplicates
    assert arch.verify().ok


def test_changed_settings_reindex_same_settings_skip(ray_session, corpus, tmp_path):
    """A memory belongs to the model *and* its sampling/plan settings: a rerun with the same settings
    skips, one with another ratio or frame count re-indexes (replacing, not duplicating)."""
    from storage import open_archive

    video = str(corpus / "good" / "sample_01.mp4")
    uri = str(tmp_path / "archive")
    base = dict(max_frames=6, workers=1, chunking="fixed")
    r8 = run_index([video], uri, make_options("tiny", ratio=8, **base), reuse_workers=True)
    again = run_index([video], uri, make_options("tiny", ratio=8, **base), reuse_workers=True)
    r16 = run_index([video], uri, make_options("tiny", ratio=16, **base), reuse_workers=True)
    assert len(r8.indexed) == 1 and [s["reason"] for s in again.skipped] == ["indexed"] and not again.indexed
    assert len(r16.indexed) == 1 and not r16.skipped
    arch = open_archive(uri)
    (rec,) = arch.list_videos()
    assert json.loads(rec.plan)["params"]["index_settings"] == make_options("tiny", ratio=16, **base).settings()
    mem = arch.load_memory(rec.video_id, r16.fingerprint)
    assert {w.ratio for w in mem.windows} == {16}
    assert mem.num_vst == len(rec.sampled_frames) * 144 // 16


def test_kv_codec_option_reaches_the_archive(ray_session, corpus, tmp_path):
    """`--kv-codec int4`: the memory is stored quantized, the report gives the bytes stored and their
    raw size; a rerun with another codec skips (a storage property, not a setting: `vxl archive
    recode` converts)."""
    from typer.testing import CliRunner

    from flows.cli import app
    from storage import open_archive

    video = str(corpus / "good" / "sample_00.mp4")
    uri = str(tmp_path / "archive")
    base = dict(max_frames=6, workers=1, chunking="fixed")
    rep = run_index([video], uri, make_options("tiny", kv_codec="int4", **base), reuse_workers=True)
    (v,) = rep.indexed
    assert v["kv_codec"] == "int4" and 0 < v["kv_bytes"] < v["kv_raw_bytes"]
    out = rep.to_json()
    assert (out["kv_bytes"], out["kv_raw_bytes"]) == (v["kv_bytes"], v["kv_raw_bytes"])
    arch = open_archive(uri)
    rec = arch.get_video(v["video_id"], rep.fingerprint)
    assert (rec.kv_codec, rec.kv_bytes, rec.kv_raw_bytes) == ("int4", v["kv_bytes"], v["kv_raw_bytes"])
    mem = arch.load_memory(v["video_id"], rep.fingerprint)
    assert mem.meta["kv_codec"] == "int4" and mem.nbytes == v["kv_raw_bytes"] and arch.verify().ok
    again = run_index([video], uri, make_options("tiny", kv_codec="raw", **base), reuse_workers=True)
    assert [s["reason"] for s in again.skipped] == ["indexed"] and not again.indexed
    with pytest.raises(UsageError, match="--kv-codec"):
        make_options("tiny", kv_codec="int3").validate()
    r = CliRunner().invoke(app, ["index", video, "--archive", uri, "--kv-codec", "int3"])
    assert r.exit_code == 2 and "--kv-codec" in r.output


def test_non_utf8_file_names_are_stored_losslessly(ray_session, corpus, tmp_path):
    """Linux file names are bytes: a name that is not UTF-8 (here b'\\xff') is indexed, stored as a
    percent-encoded file:// URI that maps back to the exact bytes, and its broken neighbour fails
    alone; the good rows of the run are all written (issue 15: one such name once lost the run)."""
    from storage import open_archive
    from tasks.video import discover, local_path

    root = os.fsencode(tmp_path / "lib")
    os.makedirs(root)
    good = root + b"/clip-\xff\xfe.mp4"
    bad = root + b"/broken-\xe9.mp4"
    shutil.copy(corpus / "good" / "sample_01.mp4", good)
    shutil.copy(corpus / "bad" / "not_a_video.mp4", bad)
    shutil.copy(corpus / "good" / "sample_02.mp4", root + b"/plain.mp4")
    srcs = discover([os.fsdecode(root)])
    uri = str(tmp_path / "archive")
    rep = run_index(srcs, uri, make_options("tiny", **{**OPTS, "fps": 4.0}), reuse_workers=True)

    assert len(rep.indexed) == 2 and [f["error_kind"] for f in rep.failed] == ["not_a_video"]
    # 4 s at 4 fps wants 16 frames, max_frames keeps 6: reported per video, not silent
    assert [v["frame_cap"] for v in rep.indexed] == [{"wanted": 16, "kept": 6, "seconds_per_frame": 0.667}] * 2
    assert "sampled uniformly" in rep.markdown()
    rows = {r.source_uri: r for r in open_archive(uri).list_videos()}
    assert len(rows) == 3  # both good videos and the failed one are in the archive
    encoded = [u for u in rows if u.startswith("file://")]
    assert sorted(os.fsencode(local_path(u)) for u in encoded) == sorted([bad, good])
    assert all("%FF%FE" in u or "%E9" in u for u in encoded)  # shown escaped
    assert os.fsencode(tmp_path / "lib" / "plain.mp4").decode() in rows  # UTF-8 names stay plain paths
    failed = next(r for r in rows.values() if r.status == "failed")
    failed.error.encode("utf-8")  # the error text quoting the name is storable and readable


def test_a_video_leased_by_another_live_run_is_not_encoded_twice(ray_session, corpus, tmp_path):
    """While another run holds a video's lease (it is encoding it), this run skips it as
    `in_progress` and indexes the rest; once that lease expires (its run was killed), a rerun
    indexes the video. No lease is left behind by a finished run."""
    from storage import open_archive
    from tasks.video import video_id

    uri = str(tmp_path / "archive")
    videos = [str(corpus / "good" / f"sample_0{i}.mp4") for i in range(2)]
    from tasks.ask import get_model

    fp = get_model("tiny").fingerprint  # what the encode workers compute on this CPU
    arch = open_archive(uri)
    busy = video_id(videos[1])
    assert arch.acquire_lease(busy, fp, "other-host:4242:run", 600.0) is None
    rep = run_index(videos, uri, make_options("tiny", **OPTS), reuse_workers=True)
    assert rep.fingerprint == fp
    assert [(s["video_id"], s["reason"], s["holder"]) for s in rep.skipped] == [
        (busy, "in_progress", "other-host:4242:run")]
    assert [v["video_id"] for v in rep.indexed] == [video_id(videos[0])] and rep.exit_code == 0
    arch.renew_leases([(busy, fp)], "other-host:4242:run", -1.0)  # the other run died: its lease expired
    again = run_index(videos, uri, make_options("tiny", **OPTS), reuse_workers=True)
    assert [v["video_id"] for v in again.indexed] == [busy]
    assert open_archive(uri).list_leases() == []  # released as each video was written


def test_progress_inside_a_video_while_it_encodes(ray_session):
    """An encode worker answers `progress` (its own concurrency group) while `encode` runs: the
    driver shows windows done, frames/s and an ETA inside a long video (it once showed `0/1 ...
    0.0 frames/s` for the whole of a 2.5-minute encode)."""
    import numpy as np

    from tasks.index import encode_progress
    from tasks.workers import PROGRESS_GROUP, PlanSpec, encode_worker_class

    worker = encode_worker_class().options(num_cpus=1).remote("tiny", PlanSpec(chunking="fixed", ratio=8))
    ray_session.get(worker.ready.remote())
    frames = np.random.default_rng(0).integers(0, 255, (160, 64, 64, 3), dtype=np.uint8)  # 16 windows
    ref = worker.encode.remote({"path": "/videos/long.mp4"}, frames)
    seen = []
    while not ray_session.wait([ref], timeout=0.2)[0]:
        p = ray_session.get(worker.progress.options(concurrency_group=PROGRESS_GROUP).remote(), timeout=10)
        if p and p["windows_total"]:
            seen.append(p)
    assert ray_session.get(ref)["ok"]
    mid = [p for p in seen if 0 < p["windows_done"] < p["windows_total"]]
    assert mid, f"no progress seen while encoding: {seen}"
    shown = encode_progress(mid[-1])
    assert shown["video"] == "/videos/long.mp4" and shown["windows_total"] == 16 and shown["frames_total"] == 160
    assert shown["frames_per_s"] > 0 and shown["eta_s"] is not None and shown["eta_s"] >= 0
    assert ray_session.get(worker.progress.options(concurrency_group=PROGRESS_GROUP).remote()) is None  # idle
    ray_session.kill(worker)


def test_two_concurrent_index_runs_encode_each_video_once(ray_session, tmp_path):
    """Two full `vxl index` processes on one archive at the same time (issue 15: both used to encode
    every video). Together they index every video
    exactly once: what one indexes the other skips, as `in_progress` (naming the holder's pid) or as
    already indexed, and nothing is left leased. (Measured: 3 + 5 videos, 8 skipped as in progress.)"""
    from storage import open_archive
    from tasks.index import shutdown_workers
    from tasks.samples import make_sample_videos
    from tasks.video import video_id

    shutdown_workers()  # each run's encode actor needs one of the shared Ray's 2 CPUs
    vids = tmp_path / "vids"
    make_sample_videos(vids, count=8, seconds=8.0, seed=41)
    ids = {video_id(str(p)) for p in vids.glob("*.mp4")}
    uri = str(tmp_path / "archive")
    address = ray_session.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "flows.cli", "index", str(vids), "--archive", uri, "--fps", "3",
           "--workers", "1", "--ray-address", address, "--json", "--no-flow"]
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    # both start together, as two operators' runs would; each lists the archive and leases video by video
    first, second = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for _ in range(2))
    outs = [p.communicate(timeout=300) for p in (first, second)]
    for p, (_out, err) in zip((first, second), outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    rep_a, rep_b = (json.loads(out) for out, _ in outs)
    done_a = {v["video_id"] for v in rep_a["indexed"]}
    done_b = {v["video_id"] for v in rep_b["indexed"]}
    assert done_a.isdisjoint(done_b) and done_a | done_b == ids  # each video encoded once, none missed
    assert {s["video_id"] for s in rep_b["skipped"]} == done_a
    assert {s["video_id"] for s in rep_a["skipped"]} == done_b
    busy = [s for s in rep_a["skipped"] + rep_b["skipped"] if s["reason"] == "in_progress"]
    assert busy, "the two runs did not overlap (no video was skipped as in progress)"
    for s in busy:  # the holder (host:pid:run) is the run that indexed the video
        holder = second if s["video_id"] in done_b else first
        assert s["holder"].split(":")[1] == str(holder.pid), s
    arch = open_archive(uri)
    rows = arch.list_videos()
    assert len(rows) == 8 and {r.video_id for r in rows} == ids and all(r.status == "indexed" for r in rows)
    assert arch.list_leases() == [] and arch.verify().ok
