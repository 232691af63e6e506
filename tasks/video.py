"""Video input: discovery, content digests, frame sampling and decoding (`tasks.decoders`) with timeouts.

Pure functions, no Prefect or Ray here (tasks wrap them). Heavy imports (decord, av, pyarrow)
happen inside the functions that need them.

Errors: every decoding failure is a `DecodeError` whose `kind` (a stable string, stored as
`error_kind` in the archive) says what went wrong:

| kind | class | when |
|---|---|---|
| `missing_file` | `MissingFile` | the path does not exist or is not a regular file |
| `empty_file` | `EmptyFile` | the file has 0 bytes |
| `not_a_video` | `NotAVideo` | FFmpeg cannot recognise a container format (text, random bytes) |
| `no_video_stream` | `NoVideoStream` | a media container without a video stream (audio only) |
| `truncated` | `Truncated` | an MP4/MOV header without its index (moov), or fewer frames than the index promises |
| `no_frames` | `NoFrames` | a video stream that reports 0 frames |
| `decode_failed` | `DecodeFailed` | any other decoder error |
| `timeout` | `DecodeTimeout` | `decode_with_timeout` killed the worker after `timeout_s` |
| `crashed` | `DecodeCrashed` | the decode worker died without an answer (e.g. a segfault in decord) |

A one-frame video is valid (Video-XL encodes a single frame like any other).
"""

from __future__ import annotations

import csv
import glob
import json
import math
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: File suffixes taken as videos in folders and globs (case-insensitive): the containers FFmpeg (and so
#: PyAV) reads that video libraries hold. Anything else found there is reported as ignored, by reason.
VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".m4v", ".mkv", ".mov", ".avi", ".webm", ".mpg", ".mpeg", ".m2v", ".mpe", ".vob", ".ts", ".mts",
    ".m2ts", ".wmv", ".asf", ".flv", ".f4v", ".3gp", ".3g2", ".ogv", ".mxf", ".dv", ".divx", ".y4m",
)
MANIFEST_EXTENSIONS: tuple[str, ...] = (".csv", ".jsonl", ".parquet")
DIGEST_CHUNK_BYTES = 8 * 1024 * 1024


# ----------------------------------------------------------------------------------------------
# Errors


class DecodeError(Exception):
    """A video could not be decoded. `kind` is a stable identifier; `path` the file concerned."""

    kind: str = "decode_failed"

    def __init__(self, message: str, *, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


class MissingFile(DecodeError):
    kind = "missing_file"


class EmptyFile(DecodeError):
    kind = "empty_file"


class NotAVideo(DecodeError):
    kind = "not_a_video"


class NoVideoStream(DecodeError):
    kind = "no_video_stream"


class Truncated(DecodeError):
    kind = "truncated"


class NoFrames(DecodeError):
    kind = "no_frames"


class DecodeFailed(DecodeError):
    kind = "decode_failed"


class DecodeTimeout(DecodeError):
    kind = "timeout"


class DecodeCrashed(DecodeError):
    kind = "crashed"


ERROR_KINDS: dict[str, type[DecodeError]] = {
    c.kind: c
    for c in (
        MissingFile,
        EmptyFile,
        NotAVideo,
        NoVideoStream,
        Truncated,
        NoFrames,
        DecodeFailed,
        DecodeTimeout,
        DecodeCrashed,
    )
}


# ----------------------------------------------------------------------------------------------
# Discovery


def source_uri(path: str | os.PathLike) -> str:
    """How a local file is named in the archive (`videos.source_uri`) and in reports: its path as a
    string when the name is valid UTF-8, else a `file://` URI whose non-UTF-8 bytes are
    percent-encoded (RFC 8089/3986), so that any name the OS gives is stored losslessly and shown
    escaped. `local_path` inverts it.

    Linux file names are bytes; Python hands undecodable bytes over as lone surrogates
    (PEP 383), which Arrow/Lance strings cannot hold (the whole run's rows were once lost to one
    such name; issue 15).
    """
    s = os.fspath(path)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        from urllib.parse import quote

        return "file://" + quote(os.fsencode(os.path.abspath(s)), safe="/")


def local_path(uri: str) -> str:
    """The OS path of a `source_uri` value (a `file://` URI is percent-decoded back to the exact bytes)."""
    if uri.startswith("file://"):
        from urllib.parse import unquote_to_bytes

        return os.fsdecode(unquote_to_bytes(uri.removeprefix("file://")))
    return uri


@dataclass(frozen=True)
class Source:
    """One video to index.

    Attributes:
        uri: as the user gave it: the manifest's `uri` value, else the absolute path as a string
            (`source_uri`: a percent-encoded `file://` URI when the name is not valid UTF-8).
        path: absolute local path (may not exist for manifest rows; decoding then fails with
            `missing_file`).
    """

    uri: str
    path: Path


def _is_glob(s: str) -> bool:
    return any(ch in s for ch in "*?[")


def _has_ext(p: Path, exts: tuple[str, ...]) -> bool:
    return p.suffix.lower() in exts


def _manifest_uris(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "uri" not in reader.fieldnames:
                raise ValueError(f"manifest {path} has no 'uri' column (columns: {reader.fieldnames})")
            return [row["uri"] for row in reader if row["uri"]]
    if suffix == ".jsonl":
        uris = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or "uri" not in row:
                raise ValueError(f"manifest {path} line {n} has no 'uri' field: {line[:200]!r}")
            uris.append(str(row["uri"]))
        return uris
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "uri" not in table.column_names:
            raise ValueError(f"manifest {path} has no 'uri' column (columns: {table.column_names})")
        return [u for u in table.column("uri").to_pylist() if u]
    raise ValueError(f"unsupported manifest {path}: use .csv, .jsonl or .parquet with a 'uri' column")


def _uri_to_path(uri: str, base: Path) -> Path:
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif "://" in uri:
        raise ValueError(
            f"unsupported URI {uri!r}: only local paths and file:// URIs can be decoded; "
            "copy object-store videos to a local folder first"
        )
    p = Path(uri).expanduser()
    return p if p.is_absolute() else base / p


def discover(sources: list[str], extensions: tuple[str, ...] = VIDEO_EXTENSIONS,
             ignored: list[dict] | None = None) -> list[Source]:
    """Expand folders, globs, manifests and files into a de-duplicated, ordered list of videos.

    Each source is one of:
    - a folder: every file below it (recursive) whose suffix is in `extensions` (case-insensitive),
      skipping hidden files and folders (names starting with "."), sorted by path;
    - a glob (contains `*`, `?` or `[`; `**` recurses): matching files with a video extension, sorted;
    - a manifest (`.csv`, `.jsonl`, `.parquet`) with a `uri` column: one video per row, in row order;
      relative uris are resolved against the manifest's folder, `file://` is stripped. Rows
      whose file is missing are kept (decoding reports `missing_file` for that video only);
    - any other existing file: that file, as a video.

    Order: sources in the given order, each expanded as above; a path seen before is skipped.

    `ignored`, if given, receives one `{"path", "reason"}` per file found under a folder or glob and
    not taken: reason "not a video extension (.EXT)" or "hidden" (a dot file or one in a dot folder).
    `ignored_summary` counts them for a report.

    Raises:
        ValueError: a source that does not exist or a glob that matches nothing (all such sources
            are named in one message), a manifest without a `uri` column, an unsupported URI scheme.
    """
    exts = tuple(e.lower() for e in extensions)
    out: list[Source] = []
    seen: set[Path] = set()
    missing: list[str] = []

    def add(uri: str | None, path: Path) -> None:
        path = Path(os.path.abspath(path))
        if path not in seen:
            seen.add(path)
            out.append(Source(uri=uri if uri is not None else source_uri(path), path=path))

    for src in sources:
        p = Path(src).expanduser()
        if p.is_dir():
            found = []
            for f in sorted(p.rglob("*"), key=lambda x: x.as_posix()):
                if not f.is_file():
                    continue
                if any(part.startswith(".") for part in f.relative_to(p).parts):
                    reason = "hidden"
                elif not _has_ext(f, exts):
                    reason = f"not a video extension ({f.suffix.lower() or 'none'})"
                else:
                    found.append(f)
                    continue
                if ignored is not None:
                    ignored.append({"path": str(f), "reason": reason})
            for f in found:
                add(None, f)
        elif p.is_file():
            if _has_ext(p, MANIFEST_EXTENSIONS):
                base = Path(os.path.abspath(p.parent))
                for uri in _manifest_uris(p):
                    add(uri, _uri_to_path(uri, base))
            else:
                add(None, p)
        elif _is_glob(src):
            matches = sorted(
                (Path(m) for m in glob.glob(os.path.expanduser(src), recursive=True)),
                key=lambda x: x.as_posix(),
            )
            files = [m for m in matches if m.is_file()]
            matches = [m for m in files if _has_ext(m, exts)]
            if ignored is not None:
                ignored.extend({"path": str(m), "reason": f"not a video extension ({m.suffix.lower() or 'none'})"}
                               for m in files if not _has_ext(m, exts))
            if not matches:
                missing.append(f"{src} (glob matched no {'/'.join(exts)} files)")
            for m in matches:
                add(None, m)
        else:
            missing.append(src)
    if missing:
        raise ValueError(
            "video source(s) not found: " + ", ".join(missing) + ". Give existing folders, files, globs "
            "or .csv/.jsonl/.parquet manifests with a 'uri' column."
        )
    return out


def ignored_summary(ignored: list[dict], examples: int = 3) -> dict[str, dict]:
    """{reason: {"count", "examples": first paths}} of `discover(..., ignored=...)`'s list."""
    out: dict[str, dict] = {}
    for item in ignored:
        r = out.setdefault(item["reason"], {"count": 0, "examples": []})
        r["count"] += 1
        if len(r["examples"]) < examples:
            r["examples"].append(item["path"])
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------------------------
# Identity


def video_id(path: str | os.PathLike) -> str:
    """Content digest of a file: `"xxh3-128:" + 32 lowercase hex digits`.

    XXH3-128 over the file's full bytes, read in 8 MiB chunks; nothing else (path, name, mtime,
    metadata) enters the digest, so a copy or a rename has the same id and any changed byte gives
    a new one. XXH3 is not cryptographic: fine for de-duplicating one's own library, not for
    defending against adversarially crafted collisions. About 10 GB/s on one core; reading the file
    is the cost.

    Raises:
        MissingFile: the path does not exist or is not a regular file.
    """
    import xxhash

    p = Path(path)
    if not p.is_file():
        raise MissingFile(f"{p}: no such file; check the path or the manifest row", path=p)
    h = xxhash.xxh3_128()
    with p.open("rb") as f:
        while chunk := f.read(DIGEST_CHUNK_BYTES):
            h.update(chunk)
    return "xxh3-128:" + h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Sampling


def sample_indices(
    num_frames: int,
    native_fps: float,
    *,
    fps: float = 1.0,
    max_frames: int = 128,
    frames: int | None = None,
) -> np.ndarray:
    """Frame indices to decode, int64 (F,), strictly increasing, all in `[0, num_frames)`.

    Uniform (`frames=N`, and the capped case): `n = min(N, num_frames)` indices
        `idx = np.linspace(0, num_frames - 1, n, dtype=int)`  (truncation, i.e. floor),
    exactly Video-XL's evaluation sampling; first and last frame always included.

    Rate (`frames=None`): one frame every `1 / fps` seconds from t = 0, the frame on screen then:
        `k = 0 .. count - 1`, `count = ceil(num_frames * fps / native_fps)` (sample times `k / fps` before
        the end `num_frames / native_fps`), `idx_k = floor(k * native_fps / fps)` (+1e-9 against
        float noise, clipped to `num_frames - 1`), duplicates removed (so `fps >= native_fps` gives
        every frame). If `count > max_frames`, the uniform formula with `n = max_frames` is used
        instead (whole video covered, fewer frames per second).

    These are the presentation-time rules of `tasks.decoders` (the ones decoding uses) applied to a
    constant frame rate: one implementation of sampling, stated here in Video-XL's index terms.

    Raises:
        ValueError: num_frames < 1, frames < 1, max_frames < 1, fps <= 0, or (rate mode)
            native_fps <= 0 / not finite.
    """
    from tasks.decoders import Sampling, select

    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    sampling = Sampling(fps=fps, max_frames=max_frames, frames=frames)
    sampling.validate()
    if frames is None and not (native_fps > 0 and math.isfinite(native_fps)):
        raise ValueError(f"native fps must be > 0 to sample by rate, got {native_fps}; use frames=N instead")
    interval = 1.0 / native_fps if frames is None else 1.0  # uniform sampling is scale-free
    pts = np.arange(num_frames, dtype=np.float64) * interval  # constant frame rate
    return select(pts, sampling.targets(float(pts[-1]), interval))


# ----------------------------------------------------------------------------------------------
# Decoding


@dataclass
class DecodedVideo:
    """Sampled frames of one video plus what the probe found.

    Attributes:
        frames: uint8 (F, H, W, 3) RGB.
        timestamps: float64 (F,) presentation time of each frame, seconds from the first frame.
        indices: int64 (F,) frame positions in presentation order (0 = first frame).
        native_fps: average frame rate reported by the stream, frames/second.
        frame_count: frames in the stream (demuxed packets with an exact index, else decoded frames).
        duration_s: stream duration in seconds (container metadata, else frame_count / native_fps).
        width, height: frame size in pixels.
        codec: FFmpeg codec name of the video stream, e.g. "h264".
        size_bytes: file size in bytes.
        path: the decoded file.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    indices: np.ndarray
    native_fps: float
    frame_count: int
    duration_s: float
    width: int
    height: int
    codec: str
    size_bytes: int
    path: str = ""
    decode_s: float = field(default=0.0)
    """wall time of the decode itself, seconds."""
    decoder: str = "pyav"
    """the back end that produced the frames (`tasks.decoders.DECODERS`)."""
    notes: list = field(default_factory=list)
    """fallbacks and the like, e.g. "decord: ...; used pyav"."""

    def probe(self) -> dict:
        """Everything except the arrays, JSON-serialisable."""
        return {
            "path": self.path,
            "native_fps": self.native_fps,
            "frame_count": self.frame_count,
            "duration_s": self.duration_s,
            "width": self.width,
            "height": self.height,
            "codec": self.codec,
            "size_bytes": self.size_bytes,
            "num_sampled": int(len(self.indices)),
            "decode_s": self.decode_s,
            "decoder_backend": self.decoder,
            "decode_notes": list(self.notes),
        }


def _check_file(p: Path) -> int:
    if not p.exists() or not p.is_file():
        raise MissingFile(f"{p}: no such file; check the path or the manifest row", path=p)
    size = p.stat().st_size
    if size == 0:
        raise EmptyFile(f"{p}: the file is empty (0 bytes); re-copy or re-download it", path=p)
    return size


def _looks_like_mp4(p: Path) -> bool:
    with p.open("rb") as f:
        head = f.read(12)
    return len(head) >= 8 and head[4:8] == b"ftyp"


def _probe_av(p: Path) -> dict:
    """Open with PyAV: container sanity, video stream, codec, duration. Raises DecodeError."""
    import av

    try:
        container = av.open(str(p))
    except av.error.FFmpegError as exc:
        if _looks_like_mp4(p):
            raise Truncated(
                f"{p}: has an MP4/MOV header but FFmpeg cannot open it ({exc.strerror}); the file is "
                "probably truncated or still being written (index/moov missing); re-copy it",
                path=p,
            ) from None
        raise NotAVideo(
            f"{p}: not a video FFmpeg can read ({exc.strerror}); remove it from the sources or "
            "convert it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)",
            path=p,
        ) from None
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise NoVideoStream(
                f"{p}: no video stream (streams: {', '.join(kinds)}); remove it from the sources",
                path=p,
            )
        vs = container.streams.video[0]
        duration = None
        if vs.duration is not None and vs.time_base is not None:
            duration = float(vs.duration * vs.time_base)
        elif container.duration is not None:
            duration = container.duration / 1e6
        return {
            "codec": vs.codec_context.name or "unknown",
            "duration_s": duration,
            "declared_frames": int(vs.frames or 0),
            "width": int(vs.codec_context.width or 0),
            "height": int(vs.codec_context.height or 0),
        }


def _count_packets(p: Path) -> int:
    """Video packets that can actually be demuxed (no decoding); -1 if demuxing fails at once."""
    import av

    try:
        with av.open(str(p)) as c:
            n = 0
            try:
                for pkt in c.demux(video=0):
                    if pkt.size:
                        n += 1
            except av.error.FFmpegError:
                pass
            return n
    except av.error.FFmpegError:
        return -1


def _raise_truncated_if_short(p: Path, promised: int, exc: BaseException) -> None:
    """After a decoder error: raise Truncated when fewer packets can be demuxed than promised."""
    packets = _count_packets(p)
    if promised > 0 and 0 <= packets < promised:
        raise Truncated(
            f"{p}: truncated: the index promises {promised} frames but only {packets} are in the "
            f"file ({_short(exc)}); re-copy or re-download it",
            path=p,
        ) from None


def decode(
    path: str | os.PathLike,
    *,
    fps: float = 1.0,
    max_frames: int = 128,
    frames: int | None = None,
    num_threads: int = 0,
    decoder: str = "auto",
) -> DecodedVideo:
    """Decode the sampled frames of one video in this process, by presentation time.

    Sampling (`tasks.decoders.Sampling`): the frames displayed at t = k / `fps` seconds from the first
    frame (at most `max_frames`, else `max_frames` uniform over the whole video), or exactly `frames`
    uniform. Back end: `decoder`, "auto" (torchcodec where installed, else pyav) or a name from
    `tasks.decoders.DECODERS`; each falls back to pyav where it cannot guarantee exact frames. Use
    `decode_with_timeout` for untrusted files: a decoder can hang or crash the process.

    Args:
        path: a local video file.
        fps, max_frames, frames: the sampling.
        num_threads: unused (kept for callers; decoders use FFmpeg's automatic threading).
        decoder: back end name.

    Returns:
        DecodedVideo with frames uint8 (F, H, W, 3) RGB (rotation applied), timestamps float64 (F,)
        seconds from the first frame (the PTS of the returned frames), indices int64 (F,) positions in
        presentation order, `decoder` naming the back end that produced them.

    Raises:
        DecodeError subclass (`kind`: missing_file, empty_file, not_a_video, no_video_stream,
        truncated, no_frames, decode_failed); ValueError for impossible sampling arguments or an
        unknown decoder; `tasks.decoders.BackendUnavailable` for a back end not installed here.
    """
    from tasks.decoders import InexactDecode, Sampling, decode_frames, index_stream

    t0 = time.perf_counter()
    p = Path(path)
    size = _check_file(p)
    sampling = Sampling(fps=fps, max_frames=max_frames, frames=frames)
    sampling.validate()
    info = _probe_av(p)

    import av

    try:
        index = index_stream(str(p))
    except av.error.FFmpegError as exc:
        raise DecodeFailed(f"{p}: cannot read the video packets ({_short(exc)}); re-encode it", path=p) from None
    if index.packets == 0:
        raise NoFrames(f"{p}: the video stream has no frames; remove it from the sources", path=p)
    if "mov" in index.container.split(",") and 0 < index.packets < info["declared_frames"]:
        # MP4/MOV sample tables are authoritative: fewer packets than they list = data missing
        raise Truncated(
            f"{p}: truncated: the index promises {info['declared_frames']} frames but only {index.packets} are in "
            "the file; re-copy or re-download it", path=p)
    try:
        out = decode_frames(str(p), sampling, backend=decoder, index=index)
    except InexactDecode as exc:
        raise NoFrames(f"{p}: no frame could be decoded ({exc}); re-encode it or remove it", path=p) from None
    except (av.error.FFmpegError, RuntimeError) as exc:
        _raise_truncated_if_short(p, info["declared_frames"], exc)
        raise DecodeFailed(f"{p}: decoding failed ({_short(exc)}); re-encode it to H.264 MP4", path=p) from None
    batch = out.frames
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[0] != len(out.indices) or batch.shape[3] != 3:
        raise DecodeFailed(f"{p}: decoder returned {batch.dtype} {batch.shape}; re-encode the video", path=p)
    interval = index.frame_interval_s
    native_fps = index.avg_fps or (1.0 / interval if interval > 0 else 0.0)
    duration = info["duration_s"] or (float(out.times[-1]) + interval)
    return DecodedVideo(
        frames=np.ascontiguousarray(batch),
        timestamps=out.times,
        indices=out.indices,
        native_fps=float(native_fps),
        frame_count=int(out.frame_count),
        duration_s=float(duration),
        width=int(batch.shape[2]),
        height=int(batch.shape[1]),
        codec=info["codec"],
        size_bytes=size,
        path=str(p),
        decode_s=time.perf_counter() - t0,
        decoder=out.backend,
        notes=list(out.notes),
    )


def _short(exc: BaseException, limit: int = 300) -> str:
    msg = str(exc).strip().splitlines()
    text = msg[-1] if msg else type(exc).__name__
    # decord messages start with "[hh:mm:ss] /github/workspace/src/...cc:NN: "
    if "] /" in text and ".cc:" in text:
        text = text.split(".cc:", 1)[1].split(":", 1)[-1].strip()
    return text[:limit]


def _worker(path: str, kwargs: dict, npy_path: str, conn, decode_fn=None) -> None:
    """Child process: decode, write frames to `npy_path`, send ("ok", fields) or ("error", kind, msg)."""
    try:
        dv = (decode_fn or decode)(path, **kwargs)
        np.save(npy_path, dv.frames, allow_pickle=False)
        fields = {k: getattr(dv, k) for k in DecodedVideo.__dataclass_fields__ if k != "frames"}
        conn.send(("ok", fields))
    except DecodeError as exc:
        conn.send(("error", exc.kind, str(exc)))
    except ValueError as exc:  # bad sampling arguments
        conn.send(("value_error", "", str(exc)))
    except Exception as exc:  # noqa: BLE001 - anything else is reported, typed, to the parent
        conn.send(("error", "decode_failed", f"{path}: {type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def decode_with_timeout(
    path: str | os.PathLike,
    *,
    timeout_s: float = 120.0,
    tmp_dir: str | os.PathLike | None = None,
    decode_fn: Callable[..., DecodedVideo] | None = None,
    **kw,
) -> DecodedVideo:
    """`decode` in a child process (multiprocessing "spawn") that is killed after `timeout_s` seconds.

    Frames come back through a temporary `.npy` file in `tmp_dir` (default: the system temp
    folder), not through pickling; the file is removed before returning. Cheap checks (missing or
    empty file) run in the caller without starting a process. Cost: about 0.5 s per call to start
    the worker (spawn + imports) on a 2-core CPU. Under "spawn" the caller's `__main__` module is
    imported again in the worker, so scripts must guard their entry point with
    `if __name__ == "__main__":`.

    Args:
        path: a local video file.
        timeout_s: wall-clock limit for the child, seconds (> 0).
        tmp_dir: folder for the frame hand-off file (needs room for F*H*W*3 bytes).
        decode_fn: what the child runs instead of `decode` (a module-level function, pickled by
            reference; tests inject hanging or crashing decoders this way).
        **kw: passed to `decode` (fps, max_frames, frames, num_threads).

    Returns:
        DecodedVideo, as `decode`.

    Raises:
        DecodeTimeout (`timeout`): the child did not finish in time and was killed.
        DecodeCrashed (`crashed`): the child exited without an answer (signal or hard crash).
        Any other DecodeError raised by `decode` in the child, with the same kind and message.
        ValueError: impossible sampling arguments or timeout_s <= 0.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    p = Path(path)
    _check_file(p)
    ctx = mp.get_context("spawn")
    work = Path(tempfile.mkdtemp(prefix="vxl-decode-", dir=tmp_dir))
    npy = work / "frames.npy"
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker, args=(str(p), kw, str(npy), send, decode_fn), daemon=True, name="vxl-decode")
    try:
        proc.start()
        send.close()
        deadline = time.monotonic() + timeout_s
        msg = None
        ended = False  # the child closed its end of the pipe (exited or crashed) without a message
        # poll() returns early on a message or when the child's end is closed.
        while msg is None and not ended:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if recv.poll(min(left, 1.0)):
                try:
                    msg = recv.recv()
                except EOFError:
                    ended = True
            elif not proc.is_alive():
                ended = True
        if msg is None:
            if ended:
                proc.join(5)  # the pipe can close a moment before the process is reaped
            if not ended or proc.is_alive():
                proc.kill()
                proc.join(5)
                raise DecodeTimeout(
                    f"{p}: decoding did not finish in {timeout_s:g} s and the worker was killed; the file "
                    "may be damaged (a decoder can hang on a wrong frame count) or too long for this "
                    "timeout; re-encode it or raise the decode timeout",
                    path=p,
                )
            raise DecodeCrashed(
                f"{p}: the decode worker died (exit code {proc.exitcode}) without an answer; the file "
                "probably crashes the decoder; re-encode it to H.264 MP4 or remove it from the sources",
                path=p,
            )
        proc.join(10)
        if msg[0] == "value_error":
            raise ValueError(msg[2])
        if msg[0] == "error":
            cls = ERROR_KINDS.get(msg[1], DecodeFailed)
            raise cls(msg[2], path=p)
        fields = msg[1]
        frames = np.load(npy, allow_pickle=False)
        return DecodedVideo(frames=frames, **fields)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        recv.close()
        shutil.rmtree(work, ignore_errors=True)


__all__ = [
    "DecodeError",
    "DecodedVideo",
    "ERROR_KINDS",
    "Source",
    "VIDEO_EXTENSIONS",
    "decode",
    "decode_with_timeout",
    "discover",
    "ignored_summary",
    "sample_indices",
    "video_id",
] + [c.__name__ for c in ERROR_KINDS.values()]
