"""Decoding (default back end, `tasks.video.decode`): frames, timestamps, probe, error kinds, the timeout worker; bench helpers."""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from video_factories import bad_files, sample_videos

from tasks.samples import load_truth
from tasks.video import (
    ERROR_KINDS,
    DecodeError,
    DecodeTimeout,
    decode,
    decode_with_timeout,
    sample_indices,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.decode import format_table, run  # noqa: E402


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    return sample_videos(tmp_path_factory.mktemp("dec"), count=1, seconds=20.0)[0]


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    files = bad_files(tmp_path_factory.mktemp("bad"))
    files["missing"] = files["empty"].parent / "does_not_exist.mp4"
    return files


EXPECTED_KIND = {
    "empty": "empty_file",
    "text": "not_a_video",
    "truncated": "truncated",
    "truncated_no_moov": "truncated",
    "audio_only": "no_video_stream",
    "missing": "missing_file",
}


def test_decode_default_one_frame_per_second(sample):
    dv = decode(sample)
    assert dv.frames.dtype == np.uint8 and dv.frames.shape == (20, 240, 320, 3)
    assert dv.frames.flags.c_contiguous
    assert dv.indices.dtype == np.int64 and dv.indices.tolist() == list(range(0, 160, 8))
    assert dv.timestamps.dtype == np.float64 and dv.timestamps.tolist() == [float(i) for i in range(20)]
    assert (dv.native_fps, dv.frame_count, dv.duration_s) == (8.0, 160, 20.0)
    assert (dv.width, dv.height, dv.codec) == (320, 240, "h264")
    assert dv.size_bytes == sample.stat().st_size
    assert dv.probe()["num_sampled"] == 20


def test_decode_uniform_frames_and_background_truth(sample):
    dv = decode(sample, frames=16)
    assert dv.indices.tolist() == sample_indices(160, 8.0, frames=16).tolist()
    truth = load_truth(sample)
    for f, t in zip(dv.frames, dv.timestamps, strict=True):
        scene = [s for s in truth["scenes"] if s["start_s"] <= t < s["end_s"]][0]
        np.testing.assert_allclose(f[2:8, 2:8].reshape(-1, 3).mean(0), scene["rgb"], atol=8)


def test_decode_in_child_equals_in_process(sample):
    a, b = (
        decode(sample, fps=2, max_frames=16),
        decode_with_timeout(sample, fps=2, max_frames=16, timeout_s=60),
    )
    assert np.array_equal(a.frames, b.frames)
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.timestamps, b.timestamps)
    assert a.probe() | {"decode_s": 0} == b.probe() | {"decode_s": 0}
    assert len(b.indices) == 16  # 40 at 2 fps, capped


@pytest.mark.parametrize("name", sorted(EXPECTED_KIND))
def test_bad_files_give_their_kind(bad, name):
    for fn in (decode, decode_with_timeout):
        with pytest.raises(DecodeError) as e:
            fn(bad[name])
        assert e.value.kind == EXPECTED_KIND[name], (fn.__name__, str(e.value))
        assert isinstance(e.value, ERROR_KINDS[EXPECTED_KIND[name]])
        assert str(bad[name]) in str(e.value) and e.value.path == str(bad[name])


@pytest.mark.parametrize("name", ["one_frame", "unicode_path"])
def test_odd_but_valid_files_decode(bad, name):
    dv = decode_with_timeout(bad[name], timeout_s=60)
    assert dv.frames.dtype == np.uint8 and dv.frames.shape[1:] == (120, 160, 3)
    if name == "one_frame":
        assert dv.frame_count == 1 and dv.indices.tolist() == [0] and dv.timestamps.tolist() == [0.0]
    else:
        assert dv.frame_count == 16 and dv.indices.tolist() == [0, 8]


def test_bad_sampling_arguments_are_value_errors(sample):
    with pytest.raises(ValueError):
        decode_with_timeout(sample, frames=0)
    with pytest.raises(ValueError):
        decode_with_timeout(sample, timeout_s=0)


def test_hanging_decoder_is_killed_on_time(sample):
    from fault_hooks import hanging_decode

    t0 = time.monotonic()
    with pytest.raises(DecodeTimeout) as e:
        decode_with_timeout(sample, timeout_s=1.5, decode_fn=hanging_decode)
    elapsed = time.monotonic() - t0
    assert e.value.kind == "timeout" and str(sample) in str(e.value)
    assert 1.5 <= elapsed < 1.5 + 3.0
    assert not mp.active_children()


def test_crashing_decoder_is_reported(sample):
    from fault_hooks import crashing_decode

    t0 = time.monotonic()
    with pytest.raises(DecodeError) as e:
        decode_with_timeout(sample, timeout_s=30, decode_fn=crashing_decode)
    assert e.value.kind == "crashed" and "exit code -9" in str(e.value)
    assert time.monotonic() - t0 < 10


def test_bench_decoders_agree(sample):
    from tasks.decoders import Sampling

    rows = run([sample], {"u12": Sampling(frames=12)}, repeats=1)
    by = {r["backend"]: r for r in rows}
    assert by["sequential"]["exact"] and by["pyav"]["exact"] and by["pyav"]["frames"] == 12
    assert by["decord"]["exact"]  # sample videos: H.264 without B-frames, where decord is exact
    assert min(r["ratio"] for r in rows if r["exact"]) == 1.0
    assert "x fastest" in format_table(rows)
