"""Decode benchmark: the same sampled frames with decord (get_batch) vs PyAV (sequential decode).

    .venv/bin/python bench/decode.py [VIDEO ...] [--frames N | --fps F] [--repeats R] [--threads T]

Without videos it writes sample videos (tasks.samples) into a temporary folder first
(`--count`, `--seconds`, `--width`, `--height`, `--video-fps`). Prints one row per video and
decoder: median seconds over the repeats, sampled frames per second, and PyAV / decord time ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.video import sample_indices  # noqa: E402


def probe(path: str | Path) -> tuple[int, float]:
    """(frame_count, native_fps) as decord reports them."""
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return len(vr), float(vr.get_avg_fps())


def decode_decord(path: str | Path, indices: np.ndarray, *, threads: int = 0) -> np.ndarray:
    """Frames at `indices` with decord `get_batch`: uint8 (F, H, W, 3) RGB."""
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
    return vr.get_batch([int(i) for i in indices]).asnumpy()


def decode_pyav(path: str | Path, indices: np.ndarray, *, threads: int = 0) -> np.ndarray:
    """Frames at `indices` with PyAV: decode every frame in order, keep the wanted ones.

    Frame i is the i-th frame the decoder outputs (presentation order), as in decord.
    Returns uint8 (F, H, W, 3) RGB; stops after the last wanted index.
    """
    import av

    wanted = {int(i): k for k, i in enumerate(indices)}
    last = max(wanted)
    out: list[np.ndarray | None] = [None] * len(indices)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        if threads:
            stream.codec_context.thread_count = threads
        for i, frame in enumerate(c.decode(stream)):
            k = wanted.get(i)
            if k is not None:
                out[k] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    missing = [int(indices[k]) for k, f in enumerate(out) if f is None]
    if missing:
        raise RuntimeError(f"{path}: PyAV decoded fewer frames than wanted; missing {missing[:5]}")
    return np.stack(out)  # (F, H, W, 3)


DECODERS = {"decord": decode_decord, "pyav": decode_pyav}


def time_decoders(
    paths: list[Path],
    *,
    frames: int | None = 32,
    fps: float = 1.0,
    max_frames: int = 128,
    repeats: int = 5,
    threads: int = 0,
) -> list[dict]:
    """Median wall time of each decoder on each video, same indices for both.

    Returns rows {video, decoder, frames, median_s, frames_per_s, ratio_vs_decord, max_abs_diff}.
    `max_abs_diff` compares the decoder's frames with decord's (uint8 levels; 0 means identical).
    """
    rows = []
    for p in paths:
        n, native = probe(p)
        idx = sample_indices(n, native, fps=fps, max_frames=max_frames, frames=frames)
        ref = None
        base = None
        for name, fn in DECODERS.items():
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                arr = fn(p, idx, threads=threads)
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            if ref is None:
                ref, base = arr, med
            diff = int(np.abs(arr.astype(np.int16) - ref.astype(np.int16)).max())
            rows.append(
                {
                    "video": p.name,
                    "decoder": name,
                    "frames": len(idx),
                    "native_frames": n,
                    "median_s": med,
                    "frames_per_s": len(idx) / med,
                    "ratio_vs_decord": med / base,
                    "max_abs_diff": diff,
                }
            )
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'video':<22} {'decoder':<7} {'frames':>6} {'of':>6} {'median s':>9} {'frames/s':>9} {'ratio':>6} {'maxdiff':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['video'][:22]:<22} {r['decoder']:<7} {r['frames']:>6} {r['native_frames']:>6} "
            f"{r['median_s']:>9.4f} {r['frames_per_s']:>9.1f} {r['ratio_vs_decord']:>6.2f} {r['max_abs_diff']:>7}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", nargs="*", type=Path)
    ap.add_argument("--frames", type=int, default=32, help="uniform frames per video (0: use --fps)")
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--max-frames", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="decoder threads (0: automatic)")
    ap.add_argument("--count", type=int, default=3, help="sample videos to write when none are given")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--video-fps", type=float, default=24.0)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vxl-bench-decode-") as tmp:
        paths = list(args.videos)
        if not paths:
            from tasks.samples import make_sample_videos

            t0 = time.perf_counter()
            paths = make_sample_videos(
                tmp,
                count=args.count,
                seconds=args.seconds,
                fps=args.video_fps,
                width=args.width,
                height=args.height,
            )
            print(
                f"wrote {len(paths)} sample videos ({args.seconds:g} s, {args.width}x{args.height} @ "
                f"{args.video_fps:g} fps) in {time.perf_counter() - t0:.1f} s"
            )
        rows = time_decoders(
            paths,
            frames=args.frames or None,
            fps=args.fps,
            max_frames=args.max_frames,
            repeats=args.repeats,
            threads=args.threads,
        )
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
