"""A corpus of real encodings in which every frame says which frame it is (issue 11's test corpus).

Each frame carries its number n as 8 bits drawn as large blocks along the top (bit i: block i white
or black, 16 px wide, 24 px high), over a moving gradient, so `frame_number(img)` reads it back
after lossy compression. Written with PyAV's bundled FFmpeg encoders (no system FFmpeg):

| name | container / codec | what is special |
|---|---|---|
| `mpeg4_bframes.avi` | AVI / MPEG-4 Part 2 | B-frames (packed bitstream), no PTS per packet |
| `mpeg1.mpg` | MPEG-1 program stream / MPEG-1 video | B-frames, PES timestamps |
| `h264_open_gop.mp4` | MP4 / H.264 | B-frames, open GOP, keyframe every 12 frames |
| `hevc.mp4` | MP4 / HEVC | B-frames |
| `vp9.webm` | WebM / VP9 | |
| `vfr.mp4` | MP4 / H.264 | variable frame rate: intervals of 1, 2 and 3 ticks of 1/30 s |
| `rotated.mp4` | MP4 / H.264 | display matrix: 90 degrees |
| `late_start.ts` | MPEG-TS / H.264 | first PTS at 10 s |
| `wrong_count.avi` | AVI / MJPEG | header frame count 10 more than the frames it holds |

`sequential_reference(path)`: every frame in presentation order with its time and number, decoded
by PyAV without seeking: the reference the decoders are compared with.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

W, H = 192, 128
BITS = 8
BLOCK_W, BLOCK_H = 16, 24


def draw(n: int) -> np.ndarray:
    """uint8 (H, W, 3) RGB frame number `n` (0 <= n < 256)."""
    y = np.arange(H)[:, None]
    x = np.arange(W)[None, :]
    img = np.empty((H, W, 3), dtype=np.uint8)
    img[..., 0] = (x * 2 + 7 * n) % 200 + 30
    img[..., 1] = (y * 2 + 5 * n) % 200 + 30
    img[..., 2] = 128
    for i in range(BITS):
        img[4 : 4 + BLOCK_H, 8 + i * (BLOCK_W + 4) : 8 + i * (BLOCK_W + 4) + BLOCK_W] = 255 if (n >> i) & 1 else 0
    return img


def frame_number(img: np.ndarray) -> int:
    """The number `draw` wrote into `img` (uint8 (H, W, 3), upright)."""
    n = 0
    for i in range(BITS):
        x0 = 8 + i * (BLOCK_W + 4)
        block = img[8 : BLOCK_H, x0 + 3 : x0 + BLOCK_W - 3].astype(np.float64).mean()
        n |= int(block > 128) << i
    return n


def _write(path: Path, fmt: str, codec: str, n: int, *, rate: int = 10, options: dict | None = None,
           pts: list[int] | None = None, time_base: Fraction | None = None, rotation: int = 0,
           bframes: int | None = None, pix_fmt: str = "yuv420p") -> Path:
    import av

    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=rate, options=options or {})
        s.width, s.height, s.pix_fmt = W, H, pix_fmt
        if time_base is not None:
            s.codec_context.time_base = time_base
        if bframes is not None:
            s.codec_context.max_b_frames = bframes
        if rotation:
            s.set_display_rotation(rotation)
        for i in range(n):
            f = av.VideoFrame.from_ndarray(draw(i), format="rgb24")
            if pts is not None:
                f.pts, f.time_base = pts[i], time_base
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def make_corpus(out: Path, n: int = 60) -> dict[str, Path]:
    """Write the corpus (module docstring) into `out`; {name: path}."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "mpeg4_bframes.avi": lambda p: _write(p, "avi", "mpeg4", n, bframes=2, options={"g": "12"}),
        "mpeg1.mpg": lambda p: _write(p, "mpeg", "mpeg1video", n, rate=25, bframes=2, options={"g": "12"}),
        "h264_open_gop.mp4": lambda p: _write(p, "mp4", "libx264", n, options={
            "x264-params": "keyint=12:min-keyint=12:open-gop=1:bframes=2:scenecut=0", "preset": "ultrafast"}),
        "hevc.mp4": lambda p: _write(p, "mp4", "libx265", n, options={
            "x265-params": "keyint=12:min-keyint=12:bframes=2:log-level=error", "preset": "ultrafast"}),
        "vp9.webm": lambda p: _write(p, "webm", "libvpx-vp9", n, options={"g": "12", "deadline": "realtime",
                                                                           "cpu-used": "8"}),
        "vfr.mp4": lambda p: _write(p, "mp4", "libx264", n, rate=30, time_base=Fraction(1, 30),
                                    pts=list(np.cumsum([0] + [1 + i % 3 for i in range(n - 1)])),
                                    options={"preset": "ultrafast", "x264-params": "keyint=12"}),
        "rotated.mp4": lambda p: _write(p, "mp4", "libx264", n, rotation=90, options={"preset": "ultrafast"}),
        "late_start.ts": lambda p: _write(p, "mpegts", "libx264", n, time_base=Fraction(1, 10),
                                          pts=[100 + i for i in range(n)],
                                          options={"preset": "ultrafast", "x264-params": "keyint=12"}),
        "wrong_count.avi": lambda p: _patch_avi_frame_count(
            _write(p, "avi", "mjpeg", n, pix_fmt="yuvj420p"), extra=10),
    }
    return {name: make(out / name) for name, make in files.items()}


def _patch_avi_frame_count(path: Path, extra: int) -> Path:
    """Add `extra` to the frame counts of the AVI headers: the main header's dwTotalFrames (`avih`
    + 8 + 16 bytes) and the video stream header's dwLength (`strh` + 8 + 32 bytes)."""
    data = bytearray(path.read_bytes())
    for tag, off in ((b"avih", 16), (b"strh", 32)):
        at = data.find(tag) + 8 + off
        count = int.from_bytes(data[at : at + 4], "little")
        data[at : at + 4] = (count + extra).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


def sequential_reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(times float64 (N,) seconds from the first frame, numbers int64 (N,)) of every frame, in
    presentation order, from one PyAV decode without seeking (rotation undone: numbers are read
    from the upright picture)."""
    import av

    times, numbers = [], []
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        for f in c.decode(vs):
            img = f.to_ndarray(format="rgb24")
            times.append(float(f.pts * vs.time_base) if f.pts is not None else np.nan)
            numbers.append(frame_number(img))
    t = np.asarray(times, dtype=np.float64)
    return t - t[0], np.asarray(numbers, dtype=np.int64)
