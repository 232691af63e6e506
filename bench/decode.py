"""Decode benchmark: every back end of `tasks.decoders` side by side, exactness checked.

    .venv/bin/python bench/decode.py [VIDEO ...] [--long-minutes 30] [--repeats 3]

Without videos it writes the test corpus (tests/decode_corpus.py: AVI/MPEG-4 with B-frames, MPEG-1
PS, H.264 open GOP, HEVC, VP9, VFR, rotated, late start, wrong header count) and one long H.264 file
(`--long-minutes`, 640x360 @ 10 fps, sample-video scenes from tasks.samples: flat scenes with moving
shapes, keyframe every 10 s) into a temporary folder. For each file, two samplings (128 uniform frames;
1 frame per second, capped at 128... no: uncapped for the long file, `--max-frames`), and each back end
(`pyav`, `decord`, `torchcodec` when installed, and `sequential`: PyAV decoding every frame, the
reference), it prints the median wall time over the repeats, the back end that actually answered
(after fallbacks), whether the frames equal the sequential decode's bit for bit, and the time ratio
to the fastest exact back end of that row group.
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tasks.decoders import DECODERS, PyAVDecoder, Sampling, decode_frames, index_stream  # noqa: E402


def sequential(path: Path, sampling: Sampling):
    """PyAV decoding every frame in presentation order (no seeking): the reference and the cost of a
    full decode."""
    return PyAVDecoder()._sequential(str(path), sampling, index_stream(str(path)))


def run(paths: list[Path], samplings: dict[str, Sampling], repeats: int) -> list[dict]:
    """Rows {video, sampling, backend, answered_by, frames, median_s, exact, ratio}."""
    backends = [b for b in DECODERS if DECODERS[b].available() is None]
    rows = []
    for p in paths:
        for label, sampling in samplings.items():
            ref = sequential(p, sampling)
            group = []
            for name in ["sequential"] + backends:
                times, out = [], None
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    out = sequential(p, sampling) if name == "sequential" else decode_frames(p, sampling, backend=name)
                    times.append(time.perf_counter() - t0)
                exact = (np.array_equal(out.indices, ref.indices) and np.array_equal(out.frames, ref.frames))
                group.append({"video": p.name, "sampling": label, "backend": name, "answered_by": out.backend,
                              "frames": len(out.indices), "of": out.frame_count, "median_s": statistics.median(times),
                              "exact": exact})
            fastest = min(r["median_s"] for r in group if r["exact"])
            for r in group:
                r["ratio"] = r["median_s"] / fastest
            rows += group
    return rows


def format_table(rows: list[dict]) -> str:
    head = (f"{'video':<20} {'sampling':<9} {'backend':<10} {'answered':<8} {'frames':>6} {'of':>6} "
            f"{'median s':>9} {'exact':>5} {'x fastest':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['video'][:20]:<20} {r['sampling']:<9} {r['backend']:<10} {r['answered_by']:<8} "
                     f"{r['frames']:>6} {r['of']:>6} {r['median_s']:>9.3f} {'yes' if r['exact'] else 'NO':>5} "
                     f"{r['ratio']:>9.2f}")
    return "\n".join(lines)


def write_long(folder: Path, minutes: float) -> Path:
    """A long H.264 file of sample-video scenes (tasks.samples), 640x360 @ 10 fps, keyframe every 10 s."""
    import av

    from tasks.samples import plan_sample_video, render_frames

    path = folder / f"long_{minutes:g}min.mp4"
    plan = plan_sample_video(seconds=60.0 * minutes, fps=10.0, width=640, height=360, seed=1)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10, options={"preset": "ultrafast", "x264-params": "keyint=100"})
        s.width, s.height, s.pix_fmt = 640, 360, "yuv420p"
        for rgb in render_frames(plan):
            c.mux(s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        c.mux(s.encode(None))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", nargs="*", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--long-minutes", type=float, default=30.0, help="length of the long file (0: none)")
    ap.add_argument("--max-frames", type=int, default=4000, help="cap of the 1 fps sampling")
    args = ap.parse_args(argv)
    samplings = {"uniform128": Sampling(frames=128), "1fps": Sampling(fps=1.0, max_frames=args.max_frames)}
    with tempfile.TemporaryDirectory(prefix="vxl-bench-decode-") as tmp:
        paths = list(args.videos)
        if not paths:
            from decode_corpus import make_corpus

            paths = list(make_corpus(Path(tmp) / "corpus", n=240).values())
            if args.long_minutes:
                t0 = time.perf_counter()
                paths.append(write_long(Path(tmp), args.long_minutes))
                print(f"wrote {paths[-1].name} in {time.perf_counter() - t0:.0f} s", flush=True)
        print(format_table(run(paths, samplings, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
