"""Bad inputs skip one video with a reason; the run finishes and writes the others."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vico_synth.captioners import Captioner, GroundTruthCaptioner
from vico_synth.clips import clip_spans
from vico_synth.extractors import HeuristicExtractor
from vico_synth.pipeline import VideoInput, synth_video


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    from tasks.samples import make_sample_videos, plan_sample_video, render_frames, write_video

    out = tmp_path_factory.mktemp("vico_bad")
    make_sample_videos(out, count=3, seconds=24.0, fps=4, width=160, height=120, seed=5)
    plan = plan_sample_video(7.0, 4, 160, 120, seed=9)  # 7 s: 2 clips of 3 s (+ a 1 s tail, dropped)
    plan["video"] = "short.mp4"
    write_video(out / "short.mp4", render_frames(plan), 4, 160, 120)
    (out / "short.json").write_text(json.dumps(plan))
    (out / "zz_not_a_video.mp4").write_text("not a video\n" * 10)
    return out


class FailsOnClip(GroundTruthCaptioner):
    """Raises on clip 2 of every video."""

    def caption(self, clip):
        if clip.clip.index == 2:
            raise RuntimeError("GPU fell off the bus")
        return super().caption(clip)


class TwoClues(HeuristicExtractor):
    def extract(self, captions, k):
        return super().extract(captions, k)[:2]


class NotAString(Captioner):
    name = "not-a-string"

    def caption(self, clip):
        return None


def _inputs(videos: Path) -> list[VideoInput]:
    from tasks.video import decode, video_id

    out = []
    for p in sorted(videos.glob("sample_*.mp4")) + [videos / "short.mp4"]:
        dv = decode(p, fps=1.0)
        out.append(VideoInput(video_id(p), p.name, str(p), None, dv.timestamps, dv.duration_s))
    return out


def _opts(videos, tmp_path, **kw):
    from tasks.vico import VicoOptions

    base = dict(source=str(videos), out=str(tmp_path), captioner="ground-truth", extractor="heuristic",
                clip_seconds=3.0, k="4", samples_per_video=2, workers=0, decode_timeout_s=60)
    base.update(kw)
    return VicoOptions(**base)


def test_each_bad_video_is_skipped_with_a_reason(videos, tmp_path):
    from tasks.vico import write_outputs

    opts = _opts(videos, tmp_path)
    settings = opts.settings()
    inp = _inputs(videos)  # sample_00, sample_01, sample_02, short
    gt, heur = GroundTruthCaptioner(), HeuristicExtractor()
    results = [
        synth_video(inp[0], FailsOnClip(), heur, settings),  # captioner raises for one clip
        synth_video(inp[1], gt, TwoClues(), settings),  # extractor returns fewer than k clues
        synth_video(inp[2], gt, heur, settings),  # fine
        synth_video(inp[3], gt, heur, settings),  # shorter than k clips
    ]
    kinds = {r.video: (r.skip_kind, r.skipped_reason) for r in results}
    assert kinds["sample_00.mp4"][0] == "caption_failed"
    assert "clip 2" in kinds["sample_00.mp4"][1] and "GPU fell off the bus" in kinds["sample_00.mp4"][1]
    assert kinds["sample_01.mp4"][0] == "too_few_clues" and "returned 2 clue(s)" in kinds["sample_01.mp4"][1]
    assert kinds["sample_02.mp4"] == (None, None)
    assert kinds["short.mp4"][0] == "too_short" and "2 clip(s)" in kinds["short.mp4"][1]
    summary = write_outputs(results, opts)
    assert summary["samples_written"]["total"] == 4  # 2 selections x 2 forms of sample_02
    assert summary["videos"] == {"total": 4, "with_samples": 1, "skipped": 3}
    assert summary["skipped_by_kind"] == {"caption_failed": 1, "too_few_clues": 1, "too_short": 1}
    assert summary["exit_code"] == 3  # a captioner failure is a failure, not a content limit
    assert [s["video"] for s in summary["skipped"]] == ["sample_00.mp4", "sample_01.mp4", "short.mp4"]


def test_captioner_returning_non_string_and_extractor_raising(videos):
    from tasks.vico import VicoOptions

    settings = VicoOptions(source=str(videos), out="x", clip_seconds=3.0, k="4").settings()
    inp = _inputs(videos)[2]
    r = synth_video(inp, NotAString(), HeuristicExtractor(), settings)
    assert r.skip_kind == "caption_failed" and "not a string" in r.skipped_reason

    class Boom(HeuristicExtractor):
        def extract(self, captions, k):
            raise ValueError("LLM answered in Klingon")

    r = synth_video(inp, GroundTruthCaptioner(), Boom(), settings)
    assert r.skip_kind == "extract_failed" and "Klingon" in r.skipped_reason


def test_undecodable_file_through_run_local(videos, tmp_path):
    from tasks.vico import plan_jobs, run_local, write_outputs

    opts = _opts(videos, tmp_path)
    jobs, _ = plan_jobs(opts)
    assert [j.video for j in jobs] == ["sample_00.mp4", "sample_01.mp4", "sample_02.mp4", "short.mp4",
                                       "zz_not_a_video.mp4"]
    results = run_local(jobs, opts)
    summary = write_outputs(results, opts)
    by = {s["video"]: s for s in summary["skipped"]}
    assert by["zz_not_a_video.mp4"]["kind"] == "decode_failed"
    assert by["zz_not_a_video.mp4"]["reason"].startswith("not_a_video")
    assert by["short.mp4"]["kind"] == "too_short"
    assert summary["videos"]["with_samples"] == 3
    assert summary["exit_code"] == 3


def test_clip_spans_by_timestamps():
    ts = np.arange(0, 30, 0.5)  # 2 fps, 30 s
    clips = clip_spans(ts, 14.0, duration_s=30.0)
    assert [(c.start_s, c.end_s, c.num_frames) for c in clips] == [(0.0, 14.0, 28), (14.0, 28.0, 28)]
    clips = clip_spans(ts, 14.0, duration_s=30.0, min_fraction=0.1)
    assert clips[-1].start_s == 28.0 and clips[-1].end_s == 30.0 and clips[-1].num_frames == 4
    # frames sampled sparser than clips: spans without a frame are left out
    clips = clip_spans(np.array([0.0, 10.0, 20.0]), 3.0, duration_s=21.0)
    assert [c.index for c in clips] == [0, 3, 6]
    assert clip_spans(np.array([]), 3.0) == []
    with pytest.raises(ValueError):
        clip_spans(np.array([1.0, 0.0]), 3.0)
    with pytest.raises(ValueError):
        clip_spans(ts, 0.0)
