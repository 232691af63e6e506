"""Frame-exact decoding: sampling defined by presentation time, and decoder back ends in a registry.

A sampled frame is *the frame displayed at time t*: the last frame whose presentation timestamp
(PTS) is <= t. Times are seconds from the first frame's PTS (a stream that starts at 10.0 s has its
first frame at 0.0), so `sampled_times` mean the same for every container. The sample times:

- rate (`fps`): t_k = k / fps for k = 0 .. ceil(duration * fps) - 1, duration = last PTS + one frame
  interval; when that is more than `max_frames`, the uniform rule with n = `max_frames` instead;
- uniform (`frames=N`, and the capped case): t_k = k * last / (N - 1), first and last frame included.
  For a constant frame rate both equal the index rules Video-XL uses (`np.linspace(0, n-1, N,
  dtype=int)`, `floor(k * native_fps / fps)`), tested in tests/test_video_sampling.py.

Frames that two sample times share are returned once. Every back end returns `Decoded` (frames
uint8 (F, H, W, 3) RGB with the container's rotation applied, times float64 (F,) = the PTS of the
returned frames, indices int64 (F,) = their positions in presentation order) and must return
exactly the frames a sequential decode shows at those times, or raise `InexactDecode` so that
`decode_frames` falls back to `pyav` (which is exact by construction: it only ever seeks to a
keyframe that the demuxer's index names and checks every frame's PTS against that index).

Back ends (`DECODERS`): `pyav` (FFmpeg through PyAV, bundled in its wheel), `decord`
(0.6.0; refused for AVI/MPEG program streams, where it returns other frames, and checked by PTS
elsewhere), `torchcodec` (optional: `make -B install EXTRAS="dev torchcodec"` and FFmpeg's shared
libraries from the system, e.g. Debian's `ffmpeg`; exact seek mode, checked by PTS). The choice and the
numbers: docs/PERFORMANCE.md, "Decoding". The default, `auto`, is torchcodec where it is installed,
else pyav (`DEFAULT_DECODER`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

#: Containers whose demuxers give no reliable per-packet PTS or seek index (AVI: packed B-frames
#: and no PTS; MPEG program/transport streams: PES timestamps only on some packets, no index):
#: decoded sequentially, and refused by the seek-based back ends (ECOSYSTEM.md, 2026-12).
SEQUENTIAL_FORMATS = ("avi", "mpeg", "mpegts", "mpegvideo", "vob", "asf", "flv", "h264", "hevc", "m4v")
#: Codecs whose packets may hold several frames (MPEG-4 Part 2 "packed bitstream").
SEQUENTIAL_CODECS = ("mpeg4", "msmpeg4v2", "msmpeg4v3", "mpeg1video", "mpeg2video", "wmv1", "wmv2", "flv1")
_EPS_S = 1e-6  # seconds added to sample times against float rounding of PTS


class InexactDecode(Exception):
    """A back end cannot guarantee the frames displayed at the requested times for this file."""


class BackendUnavailable(Exception):
    """A back end is not installed here; the message says how to install it."""


@dataclass(frozen=True)
class Sampling:
    """Which frames to take. `frames` set: exactly that many, uniform over the whole video (overrides
    `fps`); else one frame every 1 / `fps` seconds, uniform `max_frames` when that would be more."""

    fps: float = 1.0
    max_frames: int = 128
    frames: int | None = None

    def validate(self) -> None:
        """Raises ValueError for values no video can satisfy (names the option)."""
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be a finite number > 0, got {self.fps}")

    def targets(self, last_s: float, frame_interval_s: float) -> np.ndarray:
        """Sample times, float64 (K,) seconds from the first frame, non-decreasing.

        Args:
            last_s: PTS of the last frame, seconds from the first.
            frame_interval_s: typical interval between frames (the duration is `last_s` + this).
        """
        self.validate()
        if self.frames is None:
            count = max(1, math.ceil((last_s + frame_interval_s) * self.fps - 1e-9))
            if count <= self.max_frames:
                return np.arange(count, dtype=np.float64) / self.fps
            n = self.max_frames
        else:
            n = self.frames
        if n == 1:
            return np.zeros(1)
        return np.arange(n, dtype=np.float64) * (last_s / (n - 1))


def select(pts_s: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Positions (int64, unique, increasing) in the sorted `pts_s` of the frames displayed at
    `targets`: the last PTS <= t (the first frame for t before it)."""
    pos = np.searchsorted(pts_s, targets + _EPS_S, side="right") - 1
    return np.unique(np.clip(pos, 0, len(pts_s) - 1)).astype(np.int64)


@dataclass
class StreamIndex:
    """What the demuxer knows without decoding (one pass over the packets).

    Attributes:
        pts: int64 (N,) sorted PTS of the video packets, stream time base; valid when `exact`.
        keyframe_pts: int64 (K,) sorted PTS of keyframe packets.
        time_base: seconds per PTS unit.
        exact: every packet had a PTS (none discarded by an edit list, none corrupt) and the container
            and codec map one packet to one frame in a
            seekable index: the frame times are `pts` (else only a sequential decode knows them).
        container: FFmpeg format name, e.g. "mov,mp4,m4a,3gp,3g2,mj2".
        codec: FFmpeg codec name.
        packets: video packets demuxed.
        avg_fps: the stream's average frame rate (0 if unknown).
        reordered: packets come in another order than they are shown (B-frames).
    """

    pts: np.ndarray
    keyframe_pts: np.ndarray
    time_base: Fraction
    exact: bool
    container: str
    codec: str
    packets: int
    avg_fps: float
    reordered: bool = False

    def seconds(self, pts: np.ndarray | int) -> np.ndarray:
        """PTS (stream units) -> seconds from the first frame."""
        return (np.asarray(pts, dtype=np.float64) - float(self.pts[0])) * float(self.time_base)

    @property
    def frame_interval_s(self) -> float:
        if len(self.pts) > 1:
            return float(np.median(np.diff(self.pts))) * float(self.time_base)
        return 1.0 / self.avg_fps if self.avg_fps > 0 else 1.0


def index_stream(path: str) -> StreamIndex:
    """Demux every video packet of `path` (no decoding): PTS, keyframes, whether they are exact.

    Raises:
        av.error.FFmpegError: the file cannot be opened (callers map it to a `DecodeError`).
    """
    import av

    with av.open(path) as c:
        vs = c.streams.video[0]
        pts, keys, missing, n, reordered = [], [], 0, 0, False
        try:
            for pkt in c.demux(vs):
                if pkt.size == 0:
                    continue
                n += 1
                if pkt.pts is None or pkt.is_discard or pkt.is_corrupt:  # edit-list discards are never shown
                    missing += 1
                    continue
                reordered = reordered or bool(pts and pkt.pts < pts[-1])
                pts.append(pkt.pts)
                if pkt.is_keyframe:
                    keys.append(pkt.pts)
        except av.error.FFmpegError:  # a damaged tail: what was read is still an index of the rest
            pass
        fmt = c.format.name
        codec = vs.codec_context.name or ""
        tb = vs.time_base or Fraction(1, 1)
        rate = float(vs.average_rate) if vs.average_rate else 0.0
    arr = np.unique(np.asarray(pts, dtype=np.int64))
    exact = (missing == 0 and len(arr) == n and n > 0 and len(keys) > 0
             and not any(f in SEQUENTIAL_FORMATS for f in fmt.split(",")) and codec not in SEQUENTIAL_CODECS)
    return StreamIndex(pts=arr, keyframe_pts=np.unique(np.asarray(keys, dtype=np.int64)), time_base=tb,
                       exact=exact, container=fmt, codec=codec, packets=n, avg_fps=rate, reordered=reordered)


@dataclass
class Decoded:
    """Frames sampled by presentation time. See the module docstring."""

    frames: np.ndarray
    """uint8 (F, H, W, 3) RGB, rotation applied."""
    times: np.ndarray
    """float64 (F,) seconds from the first frame: the PTS of each returned frame."""
    indices: np.ndarray
    """int64 (F,) position of each frame in presentation order (0 = first frame)."""
    frame_count: int
    """frames in the stream (demuxed packets when the index is exact, else decoded frames)."""
    backend: str
    notes: list[str] = field(default_factory=list)
    """what happened on the way, e.g. a fallback and why."""


def _rgb(frame) -> np.ndarray:
    """A PyAV frame -> uint8 (H, W, 3) RGB as displayed (the display matrix's rotation applied)."""
    img = frame.to_ndarray(format="rgb24")
    rot = int(getattr(frame, "rotation", 0) or 0) % 360
    if rot:
        img = np.rot90(img, k=rot // 90)  # counter-clockwise, as PyAV reports it
    return np.ascontiguousarray(img)


class PyAVDecoder:
    """FFmpeg through PyAV. With an exact stream index: decode forward, seeking only to a keyframe
    that lies between the current position and the next wanted frame, every frame's PTS checked
    against the index. Otherwise (AVI, MPEG-PS/TS, packed bitstreams, missing PTS): one sequential
    decode, frames chosen by their own timestamps as they come."""

    name = "pyav"

    @staticmethod
    def available() -> str | None:
        return None

    def decode(self, path: str, sampling: Sampling, index: StreamIndex) -> Decoded:
        if index.exact:
            try:
                return self._indexed(path, sampling, index)
            except InexactDecode as exc:
                out = self._sequential(path, sampling, index)
                out.notes.append(f"seek path not exact ({exc}); decoded sequentially")
                return out
        return self._sequential(path, sampling, index)

    def _indexed(self, path: str, sampling: Sampling, index: StreamIndex) -> Decoded:
        import av

        pts_s = index.seconds(index.pts)
        want = select(pts_s, sampling.targets(float(pts_s[-1]), index.frame_interval_s))
        want_pts = index.pts[want]
        frames: list[np.ndarray] = []
        with av.open(path) as c:
            vs = c.streams.video[0]
            vs.thread_type = "AUTO"
            it, cur = None, None  # decoder iterator, PTS of the last frame it produced
            for target in want_pts.tolist():
                nxt = np.searchsorted(index.keyframe_pts, cur, side="right") if cur is not None else 0
                seek = it is None or (nxt < len(index.keyframe_pts) and index.keyframe_pts[nxt] <= target)
                if seek:
                    k = int(np.searchsorted(index.keyframe_pts, target, side="right")) - 1
                    if k < 0:
                        raise InexactDecode(f"no keyframe at or before PTS {target}")
                    c.seek(int(index.keyframe_pts[k]), stream=vs, backward=True, any_frame=False)
                    it, cur, keyframe = c.decode(vs), None, int(index.keyframe_pts[k])
                got = None
                for frame in it:
                    if frame.pts is None:
                        raise InexactDecode("a decoded frame has no PTS")
                    if cur is None and frame.pts < keyframe:  # leading pictures of an open GOP
                        continue
                    if cur is None and frame.pts > keyframe:
                        raise InexactDecode(f"seek to keyframe PTS {keyframe} gave PTS {frame.pts} first")
                    if cur is not None and frame.pts <= cur:
                        raise InexactDecode(f"PTS went from {cur} to {frame.pts}")
                    cur = frame.pts
                    if frame.pts == target:
                        got = frame
                        break
                    if frame.pts > target:
                        raise InexactDecode(f"PTS {target} (in the index) was never decoded; next was {frame.pts}")
                if got is None:
                    raise InexactDecode(f"the stream ended before PTS {target}")
                frames.append(_rgb(got))
        return Decoded(frames=np.stack(frames), times=pts_s[want], indices=want, frame_count=len(index.pts),
                       backend=self.name)

    def _sequential(self, path: str, sampling: Sampling, index: StreamIndex) -> Decoded:
        """Every frame in presentation order; targets from the index's estimate of the last PTS
        (exact or not, each returned frame is the one displayed at its returned time)."""
        import av

        interval = 1.0 / index.avg_fps if index.avg_fps > 0 else (index.frame_interval_s or 1.0)
        est_last = float(index.seconds(index.pts[-1])) if len(index.pts) else max(index.packets - 1, 0) * interval
        targets = sampling.targets(est_last, interval)
        frames, times, indices = [], [], []
        t0, prev, prev_t, n, j = None, None, None, 0, 0
        with av.open(path) as c:
            vs = c.streams.video[0]
            vs.thread_type = "AUTO"
            tb = float(vs.time_base or 0) or None
            for frame in c.decode(vs):
                if frame.pts is not None and tb is not None:
                    t = float(frame.pts) * tb
                else:  # no timestamp: one interval after the previous frame
                    t = (prev_t + interval) if prev_t is not None else 0.0
                if t0 is None:
                    t0 = t
                rel = t - t0
                if prev_t is not None and rel <= prev_t:  # not increasing: keep presentation order
                    rel = prev_t + interval / 1000
                while j < len(targets) and targets[j] + _EPS_S < rel:  # the previous frame was on screen
                    if prev is not None and (not indices or indices[-1] != n - 1):
                        frames.append(_rgb(prev))
                        times.append(prev_t)
                        indices.append(n - 1)
                    j += 1
                prev, prev_t = frame, rel
                n += 1
            if prev is None:
                raise InexactDecode("the stream decoded to no frames")
            if j < len(targets) and (not indices or indices[-1] != n - 1):
                frames.append(_rgb(prev))  # remaining sample times fall on the last frame
                times.append(prev_t)
                indices.append(n - 1)
        return Decoded(frames=np.stack(frames), times=np.asarray(times, dtype=np.float64),
                       indices=np.asarray(indices, dtype=np.int64), frame_count=n, backend=self.name)


class DecordDecoder:
    """decord 0.6.0 `get_batch`. Not frame-exact on AVI and MPEG program streams (ECOSYSTEM.md,
    2026-12), nor on streams with B-frames (measured on this project's corpus: H.264 and HEVC with
    open GOPs, 2 frames late after the first GOP although its timestamps look right): refused there
    (`InexactDecode`); elsewhere its frame count and timestamps are checked against the stream index."""

    name = "decord"

    @staticmethod
    def available() -> str | None:
        try:
            import decord  # noqa: F401
        except ImportError:
            return "decord is not installed (make install installs it)"
        return None

    def decode(self, path: str, sampling: Sampling, index: StreamIndex) -> Decoded:
        if not index.exact:
            raise InexactDecode(f"decord is not frame-exact on {index.container}/{index.codec} files")
        if index.reordered:
            raise InexactDecode("decord is not frame-exact on streams with B-frames")
        import decord

        vr = decord.VideoReader(path, ctx=decord.cpu(0))
        if len(vr) != len(index.pts):
            raise InexactDecode(f"decord counts {len(vr)} frames, the stream holds {len(index.pts)}")
        pts_s = index.seconds(index.pts)
        want = select(pts_s, sampling.targets(float(pts_s[-1]), index.frame_interval_s))
        got = np.asarray(vr.get_frame_timestamp(want.tolist()), dtype=np.float64)[:, 0]
        start = float(index.pts[0]) * float(index.time_base)
        if np.abs((got - start) - pts_s[want]).max(initial=0.0) > index.frame_interval_s / 2:
            raise InexactDecode("decord's frame timestamps differ from the stream's PTS")
        batch = vr.get_batch(want.tolist()).asnumpy()
        return Decoded(frames=np.ascontiguousarray(batch), times=pts_s[want], indices=want,
                       frame_count=len(index.pts), backend=self.name)


class TorchCodecDecoder:
    """torchcodec `VideoDecoder(seek_mode="exact").get_frames_played_at` (the frame displayed at t),
    checked by PTS; refused where the stream index is not exact (it was 2-12 frames off on an MPEG-1
    program stream, ECOSYSTEM.md)."""

    name = "torchcodec"

    @staticmethod
    def available() -> str | None:
        try:
            import torchcodec.decoders  # noqa: F401
        except ImportError:
            return ("torchcodec is not installed: `make -B install EXTRAS=\"dev torchcodec\"` (torchcodec 0.15, "
                    "pinned by the lock) and FFmpeg's shared libraries from the system (Debian: apt-get install ffmpeg)")
        except (OSError, RuntimeError) as exc:  # installed, but FFmpeg's libraries are missing
            return f"torchcodec cannot load FFmpeg's libraries ({str(exc)[:200]}); install them (apt-get install ffmpeg)"
        return None

    def decode(self, path: str, sampling: Sampling, index: StreamIndex) -> Decoded:
        if not index.exact:
            raise InexactDecode(f"torchcodec's seeks are not exact on {index.container}/{index.codec} files")
        from torchcodec.decoders import VideoDecoder

        pts_s = index.seconds(index.pts)
        want = select(pts_s, sampling.targets(float(pts_s[-1]), index.frame_interval_s))
        start = float(index.pts[0]) * float(index.time_base)
        dec = VideoDecoder(path, seek_mode="exact", dimension_order="NHWC")
        batch = dec.get_frames_played_at(seconds=(pts_s[want] + start + _EPS_S).tolist())
        got = batch.pts_seconds.numpy().astype(np.float64) - start
        if np.abs(got - pts_s[want]).max(initial=0.0) > index.frame_interval_s / 2:
            raise InexactDecode("torchcodec returned frames at other times than requested")
        return Decoded(frames=np.ascontiguousarray(batch.data.numpy()), times=pts_s[want], indices=want,
                       frame_count=len(index.pts), backend=self.name)


DECODERS: dict[str, type] = {"pyav": PyAVDecoder, "decord": DecordDecoder, "torchcodec": TorchCodecDecoder}
#: `auto`: torchcodec where it is installed (with FFmpeg's libraries), else pyav. Both are exact on
#: every file kind of the corpus (torchcodec falls back to pyav where its seeks are not, and returned
#: bit-identical RGB frames on every row of bench/decode.py); torchcodec was 1.4-5x faster on seekable
#: files (docs/PERFORMANCE.md, "Decoding"). pyav needs nothing outside the lock, so `auto` never needs
#: torchcodec.
DEFAULT_DECODER = "auto"
CHOICES = ("auto", *DECODERS)


def resolve_backend(backend: str) -> str:
    """`auto` -> the back end it stands for here; other names unchanged (ValueError if unknown)."""
    if backend == "auto":
        return "torchcodec" if TorchCodecDecoder.available() is None else "pyav"
    if backend not in DECODERS:
        raise ValueError(f"unknown decoder {backend!r}; one of {list(CHOICES)}")
    return backend


def decode_frames(path: str | os.PathLike, sampling: Sampling, backend: str = DEFAULT_DECODER,
                  index: StreamIndex | None = None) -> Decoded:
    """Sample `path` by presentation time with `backend` (`auto` or a `DECODERS` name); falls back to
    `pyav` when the back end cannot guarantee exact frames for this file (`Decoded.notes` says so).

    Raises:
        ValueError: unknown back end, impossible sampling.
        BackendUnavailable: the back end is not installed (message: how to install it).
        InexactDecode: only if `pyav` itself cannot decode the stream to any frame.
        av.error.FFmpegError / RuntimeError: decoder errors (mapped to `DecodeError`s by `tasks.video`).
    """
    backend = resolve_backend(backend)
    sampling.validate()
    dec = DECODERS[backend]()
    why = dec.available()
    if why is not None:
        raise BackendUnavailable(why)
    path = os.fspath(path)
    index = index or index_stream(path)
    if backend == "pyav":
        return dec.decode(path, sampling, index)
    try:
        return dec.decode(path, sampling, index)
    except InexactDecode as exc:
        out = PyAVDecoder().decode(path, sampling, index)
        out.notes.append(f"{backend}: {exc}; used pyav")
        return out
