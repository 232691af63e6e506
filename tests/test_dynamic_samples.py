"""Dynamic planning on real H.264 sample videos with known cut times (tiny random CLIP), the stored
plan, and `vxl archive show --plot`."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from model.clip_embed import TINY_CLIP, ClipEmbedder
from model.dynamic import plan_dynamic, window_mean_embeddings
from storage import VideoRecord
from tasks.video import decode, video_id

FPS = 2.0


@pytest.fixture(scope="module")
def embedder():
    return ClipEmbedder(TINY_CLIP, device="cpu")


@pytest.mark.parametrize("index", [0, 1, 2])
def test_boundaries_within_one_sampled_frame_of_each_true_cut(sample_dir, embedder, index):
    path = sorted(sample_dir.glob("*.mp4"))[index]
    truth = json.loads(path.with_suffix(".json").read_text())
    dec = decode(path, fps=FPS, max_frames=512)
    emb = embedder.embed_images(dec.frames)
    plan = plan_dynamic(emb, tokens_per_frame=144, window_tokens=1440, target_ratio=8)
    bounds = [float(dec.timestamps[b]) for b in plan.extras["boundaries"]]
    # a cut after the last sampled frame cannot be seen at this sampling rate
    visible = [c for c in truth["cuts"] if c <= dec.timestamps[-1]]
    assert len(visible) >= 2, "sample videos have scene cuts"
    for cut in visible:
        nearest = min(abs(b - cut) for b in bounds)
        assert nearest <= 1.0 / FPS + 1e-6, f"cut at {cut}s: nearest boundary {nearest:.3f}s away ({bounds})"
    # every window starts at a boundary or inside a segment, never crosses one
    starts = {w.frame_start for w in plan.windows}
    assert set(plan.extras["boundaries"]) <= starts
    assert all(w.num_frames * 144 <= 1440 for w in plan.windows)
    budget = dec.frames.shape[0] * 144 // 8
    assert budget - len(plan.windows) <= plan.num_vst <= budget
    again = plan_dynamic(embedder.embed_images(dec.frames), tokens_per_frame=144, window_tokens=1440)
    assert again == plan


def test_plan_stored_with_video_and_plotted(sample_dir, embedder, tiny_vx, archive, tmp_path):
    path = sorted(sample_dir.glob("*.mp4"))[0]
    dec = decode(path, fps=FPS, max_frames=512)
    emb = embedder.embed_images(dec.frames)
    plan = plan_dynamic(emb, tokens_per_frame=144, window_tokens=1440, target_ratio=8)
    plan = replace(plan, params={**plan.params, "clip_model": TINY_CLIP})
    memory = tiny_vx.encode(dec.frames, plan, timestamps=dec.timestamps)
    vid = video_id(path)
    rec = VideoRecord(video_id=vid, model_fingerprint=tiny_vx.fingerprint, model_name="tiny",
                      source_uri=str(path), sampled_frames=dec.indices.tolist(),
                      sampled_times=dec.timestamps.tolist(), plan=json.dumps(plan.to_dict()))
    archive.put(rec, memory, window_embeddings=window_mean_embeddings(plan, emb))
    stored = json.loads(archive.get_video(vid, tiny_vx.fingerprint).plan)
    assert stored["extras"]["boundaries"] == plan.extras["boundaries"]
    assert stored["windows"] == [[w.frame_start, w.frame_end, w.ratio] for w in plan.windows]
    got_emb, spans = archive.window_embeddings(vid, tiny_vx.fingerprint)
    np.testing.assert_array_equal(got_emb, window_mean_embeddings(plan, emb))
    assert [s.ratio for s in spans] == [w.ratio for w in plan.windows]

    png = tmp_path / "plan.png"
    res = CliRunner().invoke(app, ["archive", "show", vid[:20], "--archive", archive.uri, "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    w, h = Image.open(png).size
    assert w >= 1000 and h >= 500
