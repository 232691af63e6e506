"""Frame sampling formulas (tasks.video.sample_indices)."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.video import sample_indices


def test_uniform_is_video_xl_linspace():
    idx = sample_indices(100, 25.0, frames=8)
    assert idx.dtype == np.int64
    assert idx.tolist() == [0, 14, 28, 42, 56, 70, 84, 99]
    for n, k in [(1000, 128), (129, 128), (7, 7), (3000, 1)]:
        assert np.array_equal(sample_indices(n, 30.0, frames=k), np.linspace(0, n - 1, k, dtype=int))


def test_uniform_never_repeats_frames():
    assert sample_indices(5, 30.0, frames=128).tolist() == [0, 1, 2, 3, 4]
    assert sample_indices(1, 30.0, frames=16).tolist() == [0]


def test_rate_one_frame_per_second():
    assert sample_indices(160, 8.0).tolist() == list(range(0, 160, 8))
    # 29.97 fps, 10.01 s: samples at t = 0..10 s, the frame on screen at each
    assert sample_indices(300, 29.97).tolist() == [0, 29, 59, 89, 119, 149, 179, 209, 239, 269, 299]
    assert sample_indices(161, 8.0).tolist() == list(range(0, 161, 8))  # t = 20 s < 20.125 s
    assert sample_indices(160, 8.0, fps=2).tolist() == list(range(0, 160, 4))
    assert sample_indices(10, 8.0, fps=0.1).tolist() == [0]


def test_rate_above_native_gives_every_frame():
    assert sample_indices(10, 8.0, fps=30).tolist() == list(range(10))


def test_rate_capped_by_max_frames_is_uniform():
    assert len(sample_indices(3600, 30.0)) == 120  # 120 s at 1 fps fits in 128
    idx = sample_indices(7200, 30.0)  # 240 s: capped
    assert np.array_equal(idx, np.linspace(0, 7199, 128, dtype=int))
    assert sample_indices(7200, 30.0, max_frames=4).tolist() == [0, 2399, 4799, 7199]


@pytest.mark.parametrize(
    "args,kw",
    [
        ((0, 30.0), {}),
        ((10, 30.0), {"frames": 0}),
        ((10, 30.0), {"fps": 0}),
        ((10, 30.0), {"fps": float("nan")}),
        ((10, 30.0), {"max_frames": 0}),
        ((10, 0.0), {}),
        ((10, float("inf")), {}),
    ],
)
def test_impossible_inputs_raise(args, kw):
    with pytest.raises(ValueError):
        sample_indices(*args, **kw)


def test_uniform_does_not_need_native_fps():
    assert sample_indices(10, 0.0, frames=2).tolist() == [0, 9]
