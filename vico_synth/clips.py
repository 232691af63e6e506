"""Clipping a decoded video into fixed-length clips by its decoded timestamps (VICO step 1).

Clip `i` covers `[i * clip_seconds, (i + 1) * clip_seconds)` seconds of the video (the last one
ends at the video's duration) and holds the decoded frames whose presentation timestamp falls in
that span. Video-XL's VICO recipe uses 14-second clips of CinePile movie clips (VIDEO_XL.md
section 5). numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Times within this many seconds are equal (decoders report float timestamps).
TIME_EPS_S = 1e-6


@dataclass(frozen=True)
class Clip:
    """One clip of a video.

    Attributes:
        index: 0-based clip number in the video.
        start_s: start of the clip's span, seconds from the video start.
        end_s: end of the span (exclusive), seconds.
        frame_start: first position in the decoded frame array belonging to the clip.
        frame_end: one past the last position (frames `[frame_start, frame_end)`).
    """

    index: int
    start_s: float
    end_s: float
    frame_start: int
    frame_end: int

    @property
    def num_frames(self) -> int:
        """Decoded frames in the clip."""
        return self.frame_end - self.frame_start

    @property
    def seconds(self) -> float:
        """Length of the span, seconds."""
        return self.end_s - self.start_s


@dataclass
class ClipInput:
    """What a captioner sees for one clip.

    Attributes:
        video_id: content digest of the video (`tasks.video.video_id`).
        video_path: local path of the video file.
        clip: the clip's span.
        frames: uint8 (f, H, W, 3) RGB frames of the clip, or None when the caller did not decode pixels.
        timestamps: float64 (f,) seconds, one per frame.
        duration_s: duration of the whole video, seconds.
        annotation: per-video annotation (a CinePile row, ...), or None.
    """

    video_id: str
    video_path: str
    clip: Clip
    frames: np.ndarray | None
    timestamps: np.ndarray
    duration_s: float
    annotation: dict | None = field(default=None)


def clip_spans(
    timestamps, clip_seconds: float = 14.0, duration_s: float | None = None, min_fraction: float = 0.5
) -> list[Clip]:
    """Cut a video into clips of `clip_seconds` by its decoded frame timestamps.

    Args:
        timestamps: (F,) presentation times of the decoded frames, seconds, non-decreasing.
        clip_seconds: clip length in seconds (> 0).
        duration_s: the video's duration in seconds; default: last timestamp (a frame's time is
            its start, so a video ends at least there).
        min_fraction: a last, shorter clip is kept only if it covers at least this fraction of
            `clip_seconds` (0.5: a 20 s video with 14 s clips gives one clip).

    Returns:
        Clips in time order, each with at least one frame. A span without any decoded frame
        (frames sampled sparser than the clips) is left out, so `index` values may skip.

    Raises:
        ValueError: clip_seconds <= 0, timestamps not 1-D or decreasing.
    """
    if not clip_seconds > 0:
        raise ValueError(f"clip_seconds must be > 0, got {clip_seconds}")
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.ndim != 1:
        raise ValueError(f"timestamps must be 1-D (F,), got shape {ts.shape}")
    if ts.size == 0:
        return []
    if np.any(np.diff(ts) < -TIME_EPS_S):
        raise ValueError("timestamps must be non-decreasing (decoded frames in time order)")
    end = float(duration_s) if duration_s is not None and duration_s > 0 else float(ts[-1])
    end = max(end, float(ts[-1]))
    n = int(np.ceil(end / clip_seconds - TIME_EPS_S)) if end > 0 else 1
    n = max(n, 1)
    clips = []
    for i in range(n):
        start = i * clip_seconds
        stop = min((i + 1) * clip_seconds, end) if i == n - 1 else (i + 1) * clip_seconds
        if i == n - 1 and n > 1 and (stop - start) < min_fraction * clip_seconds - TIME_EPS_S:
            break
        lo = int(np.searchsorted(ts, start - TIME_EPS_S, side="left"))
        hi = int(np.searchsorted(ts, (i + 1) * clip_seconds - TIME_EPS_S, side="left")) if i < n - 1 else ts.size
        if hi > lo:
            clips.append(Clip(index=i, start_s=float(start), end_s=float(max(stop, start)), frame_start=lo,
                              frame_end=hi))
    return clips


def sample_clip_frames(num_frames: int, count: int) -> np.ndarray:
    """`count` positions spread uniformly over a clip of `num_frames` frames (both ends included).

    int64 (min(count, num_frames),); `np.linspace(0, num_frames - 1, n)` rounded down, as
    Video-XL samples frames. Raises ValueError when num_frames < 1 or count < 1.
    """
    if num_frames < 1 or count < 1:
        raise ValueError(f"need num_frames >= 1 and count >= 1, got {num_frames}, {count}")
    return np.linspace(0, num_frames - 1, min(count, num_frames), dtype=int).astype(np.int64)
