"""Sample videos: real H.264, JSON contract, exact cut times, visible events, determinism, CLI."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import typer
from typer.testing import CliRunner
from video_factories import PALETTE, corner_mean, nearest, patch_mean, sample_videos

from flows.cli_samples import register
from tasks.samples import BACKGROUNDS, COLORS, POSITIONS, load_truth, make_bad_files, plan_sample_video
from tasks.video import decode, video_id


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return sample_videos(tmp_path_factory.mktemp("samples"), count=2, seconds=20.0)


@pytest.fixture(scope="module")
def all_frames(samples):
    """Every frame of each sample, decoded with decord: {path: DecodedVideo}."""
    return {p: decode(p, frames=10_000) for p in samples}


def test_files_are_h264_with_the_declared_geometry(samples):
    for p in samples:
        truth = load_truth(p)
        with av.open(str(p)) as c:
            assert c.format.name.startswith("mov,mp4")
            (vs,) = c.streams.video
            assert not c.streams.audio
            assert vs.codec_context.name == "h264"
            assert (vs.codec_context.width, vs.codec_context.height) == (320, 240)
            assert vs.average_rate == 8
            n = sum(1 for _ in c.decode(vs))
        assert n == truth["num_frames"] == 160
        assert truth["video"] == p.name


def test_json_follows_the_contract(samples):
    for p in samples:
        t = json.loads(p.with_suffix(".json").read_text())
        assert {"video", "seconds", "fps", "width", "height", "cuts", "scenes", "events"} <= set(t)
        assert (t["seconds"], t["fps"], t["width"], t["height"]) == (20.0, 8.0, 320, 240)
        assert all(isinstance(c, float) for c in t["cuts"])
        assert t["cuts"] == [s["start_s"] for s in t["scenes"][1:]]
        assert t["scenes"][0]["start_s"] == 0.0 and t["scenes"][-1]["end_s"] == t["seconds"]
        for a, b in zip(t["scenes"], t["scenes"][1:], strict=False):
            assert a["end_s"] == b["start_s"] and a["background"] != b["background"]
        assert all(s["background"] in BACKGROUNDS for s in t["scenes"])
        ev = t["events"]
        assert len(ev) >= 6 and len(t["scenes"]) >= 3
        starts = [e["start_s"] for e in ev]
        assert starts == sorted(starts) and len(set(starts)) == len(starts)
        assert all(b - a >= 1.5 for a, b in zip(starts, starts[1:], strict=False))
        texts = [e["text"] for e in ev]
        assert len(set(texts)) == len(texts)
        for e in ev:
            assert set(e) >= {"start_s", "end_s", "text", "kind", "frame"}
            assert e["start_s"] < e["end_s"] <= t["seconds"]
            assert e["start_s"] * t["fps"] == e["frame"]  # exactly on a frame boundary
            assert e["text"][0].islower() and "  " not in e["text"]
        cut_events = [e["start_s"] for e in ev if e["kind"] == "cut"]
        assert cut_events == t["cuts"]


def test_cuts_happen_exactly_at_the_declared_frames(samples, all_frames):
    names = [f"bg:{k}" for k in BACKGROUNDS]
    for p in samples:
        t, dv = load_truth(p), all_frames[p]
        assert len(dv.frames) == t["num_frames"]
        np.testing.assert_allclose(dv.timestamps, np.arange(t["num_frames"]) / t["fps"])
        seen = [nearest(corner_mean(f), names)[3:] for f in dv.frames]
        for cut in t["cuts"]:
            k = round(cut * t["fps"])
            assert k / t["fps"] == cut
            before = [s for s in t["scenes"] if s["end_s"] == cut][0]["background"]
            after = [s for s in t["scenes"] if s["start_s"] == cut][0]["background"]
            assert (seen[k - 1], seen[k]) == (before, after), (p.name, cut)
        for s in t["scenes"]:  # and nowhere else
            assert set(seen[s["frame_start"] : s["frame_end"]]) == {s["background"]}
            np.testing.assert_allclose(corner_mean(dv.frames[s["frame_start"]]), s["rgb"], atol=8)


def test_events_are_visible_where_the_json_says(samples, all_frames):
    for p in samples:
        t, frames = load_truth(p), all_frames[p].frames
        w, h = t["width"], t["height"]
        bg_of = np.empty(t["num_frames"], dtype=object)
        for s in t["scenes"]:
            bg_of[s["frame_start"] : s["frame_end"]] = s["background"]
        obj = [e for e in t["events"] if e["kind"] != "cut"]
        assert obj, p
        for e in obj:
            f = e["frame"]
            fx, fy = POSITIONS[e["position"]]
            x, y = fx * w, fy * h
            last = round(e["end_s"] * t["fps"]) - 1  # last frame of this event
            if e["kind"] == "disappear":
                assert nearest(patch_mean(frames[f], x, y)) == f"bg:{bg_of[f]}", e
            elif e["kind"] == "move":
                assert nearest(patch_mean(frames[last], x, y)) == f"fg:{e['color']}", e
            else:
                assert nearest(patch_mean(frames[f], x, y)) == f"fg:{e['color']}", e
                before = nearest(patch_mean(frames[f - 1], x, y))
                if e["kind"] == "appear":
                    assert before == f"bg:{bg_of[f - 1]}", e
                elif e["kind"] == "recolor":
                    assert before != f"fg:{e['color']}" and before.startswith("fg:"), e


def test_same_seed_same_files_other_seed_other_files(tmp_path, samples):
    again = sample_videos(tmp_path / "again", count=2, seconds=20.0)
    for a, b in zip(samples, again, strict=True):
        assert a.with_suffix(".json").read_text() == b.with_suffix(".json").read_text()
        assert video_id(a) == video_id(b)  # libx264 is deterministic: identical bytes
    other = sample_videos(tmp_path / "other", count=1, seconds=20.0, seed=1)
    assert load_truth(other[0])["events"] != load_truth(samples[0])["events"]
    assert load_truth(samples[0])["events"] != load_truth(samples[1])["events"]


@pytest.mark.parametrize("seconds", [5.0, 60.0, 300.0])
def test_plans_for_other_lengths_keep_the_rules(seconds):
    t = plan_sample_video(seconds, 8, 320, 240, seed=3)
    texts = [e["text"] for e in t["events"]]
    assert len(set(texts)) == len(texts)
    assert t["num_frames"] == seconds * 8
    assert all(e["color"] in COLORS for e in t["events"] if e["kind"] != "cut")
    assert len(t["events"]) >= seconds / 3 - 1


def test_plan_rejects_bad_arguments():
    for kw in ({"seconds": 0}, {"fps": 0}, {"width": 65}, {"height": 32}):
        with pytest.raises(ValueError):
            plan_sample_video(**kw)


def test_bad_files_factory(tmp_path):
    files = make_bad_files(tmp_path)
    assert set(files) == {
        "empty",
        "text",
        "truncated",
        "truncated_no_moov",
        "audio_only",
        "one_frame",
        "unicode_path",
    }
    assert files["empty"].stat().st_size == 0
    assert " " in str(files["unicode_path"]) and not str(files["unicode_path"]).isascii()
    with av.open(str(files["audio_only"])) as c:
        assert not c.streams.video and c.streams.audio[0].codec_context.name == "aac"
    assert set(PALETTE)  # palette import is used by the other tests


def _app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)  # keep a command group even with one command
    register(app)
    return app


def test_cli_writes_videos_and_prints_json(tmp_path):
    r = CliRunner().invoke(
        _app(), ["sample-videos", str(tmp_path), "--count", "2", "--seconds", "4", "--json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [v["video"] for v in out["videos"]] == [
        str(tmp_path / "sample_00.mp4"),
        str(tmp_path / "sample_01.mp4"),
    ]
    assert all(v["seconds"] == 4.0 and v["fps"] == 8.0 for v in out["videos"])
    assert (tmp_path / "sample_01.json").is_file()


def test_cli_usage_errors_exit_2(tmp_path):
    r = CliRunner().invoke(_app(), ["sample-videos", str(tmp_path), "--width", "65"])
    assert r.exit_code == 2
    r = CliRunner().invoke(_app(), ["sample-videos", str(tmp_path), "--count", "0"])
    assert r.exit_code == 2
