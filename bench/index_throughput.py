"""Index throughput: end to end (`run_index`: decode -> plan -> encode -> archive on Ray) vs each
stage alone, on the same sample corpus, with 1 and 2 encode workers.

    .venv/bin/python bench/index_throughput.py [--count 3] [--seconds 12] [--fps 1] [--repeats 3]

Stages alone (same sampled frames):
- decode: the default back end in-process (what the pipeline's Ray decode tasks run; the driver
  kills a task past --decode-timeout), the same in a spawned child (`decode_with_timeout`, the
  standalone killable path), PyAV decoding every frame (bench/decode.py `sequential`);
- plan: CLIP (`vxl-tiny-clip`) embeddings + `plan_dynamic`, in-process, 1 thread;
- encode: the encode actors alone (`EncodeWorker.encode`, plan included, frames already in Ray's
  object store), 1 and 2 workers.
End to end: `run_index` into a fresh archive with warm workers (model load excluded).
Pipeline efficiency = end-to-end frames/s / slowest stage's frames/s (stage throughput for N
workers: decode and plan run beside the encoders, encode uses N actors).
Prints a table of medians (frames/s) and ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--max-frames", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    import numpy as np
    import ray
    import torch

    from bench.decode import sequential
    from tasks.decoders import Sampling
    from tasks.index import make_options, run_index, shutdown_workers
    from tasks.samples import make_sample_videos
    from tasks.video import decode, decode_with_timeout
    from tasks.workers import load_encoder

    work = Path(tempfile.mkdtemp(prefix="vxl-bench-index-"))
    paths = make_sample_videos(work / "videos", count=args.count, seconds=args.seconds, seed=5)
    kw = dict(fps=args.fps, max_frames=args.max_frames)
    decoded = [decode(p, **kw) for p in paths]
    nframes = sum(len(d.indices) for d in decoded)
    rows: list[tuple[str, float]] = []  # (stage, frames/s)

    t = _median_time(lambda: [decode(p, **kw) for p in paths], args.repeats)
    decode_inproc = nframes / t
    rows.append(("decode pyav (in-process, what the pipeline runs)", decode_inproc))
    t = _median_time(lambda: [decode_with_timeout(p, timeout_s=120, **kw) for p in paths], args.repeats)
    decode_child = nframes / t
    rows.append(("decode pyav (killable child)", decode_child))
    t = _median_time(lambda: [sequential(p, Sampling(**kw)) for p in paths], args.repeats)
    rows.append(("decode PyAV, every frame (same sampling)", nframes / t))

    torch.set_num_threads(1)
    opts = make_options("tiny", **kw)
    enc = load_encoder("tiny", opts.plan, device="cpu")
    t_plan = _median_time(lambda: [enc.plan(d.frames) for d in decoded], args.repeats)
    plan_fps = nframes / t_plan
    rows.append(("plan (CLIP tiny + dynamic), 1 thread", plan_fps))
    t_enc1 = _median_time(lambda: [enc.vx.encode(d.frames, enc.plan(d.frames)[0]) for d in decoded], args.repeats)
    rows.append(("plan+encode in-process, 1 thread", nframes / t_enc1))

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="warning")
    results = {}
    for n in (1, 2):
        o = make_options("tiny", workers=n, **kw)
        run_index([str(p) for p in paths], str(work / f"warm{n}"), o, reuse_workers=True)  # load the model
        from tasks.index import _POOLS

        pool = next(p for k, p in _POOLS.items() if k[2] == n)
        refs = [(d.probe() | {"timestamps": list(d.timestamps), "indices": list(d.indices)}, ray.put(d.frames))
                for d in decoded]

        def encode_only(pool=pool, refs=refs):
            out = [pool.slots[i % len(pool.slots)].handle.encode.remote(m, f) for i, (m, f) in enumerate(refs)]
            ray.get(out)

        t = _median_time(encode_only, args.repeats)
        enc_fps = nframes / t
        rows.append((f"encode actors alone, {n} worker(s)", enc_fps))
        e2e = []
        for r in range(args.repeats):
            rep = run_index([str(p) for p in paths], str(work / f"a{n}_{r}"), o, reuse_workers=True)
            assert len(rep.indexed) == len(paths), rep.failed
            e2e.append(rep.frames / rep.seconds)
        e2e_fps = statistics.median(e2e)
        rows.append((f"end to end run_index, {n} worker(s)", e2e_fps))
        slowest = min(decode_inproc, plan_fps, enc_fps)
        results[n] = (e2e_fps, slowest)
        shutdown_workers()  # free the CPUs for the next pool
    ray.shutdown()

    print(f"corpus: {len(paths)} videos x {args.seconds:g} s, 320x240 @ 8 fps, {nframes} sampled frames "
          f"(--fps {args.fps:g}); medians of {args.repeats}; tiny model, CPU, {os.cpu_count()} cores")
    print(f"{'stage':<42} {'frames/s':>9}")
    print("-" * 52)
    for name, fps in rows:
        print(f"{name:<42} {fps:>9.2f}")
    print("-" * 52)
    for n, (e2e_fps, slowest) in results.items():
        print(f"pipeline efficiency, {n} worker(s): e2e / slowest stage = {e2e_fps:.2f} / {slowest:.2f} = "
              f"{e2e_fps / slowest:.2f}")
    print(f"2 vs 1 workers end to end: {results[2][0] / results[1][0]:.2f}x")
    dec_cost = 1 / decode_inproc
    print(f"cost per frame: decode {1000 * dec_cost:.1f} ms, plan {1000 / plan_fps:.1f} ms, "
          f"plan+encode 1 thread {1000 * t_enc1 / nframes:.1f} ms; plan / decode = {dec_cost and (1 / plan_fps) / dec_cost:.2f}, "
          f"plan / (plan+encode) = {(1 / plan_fps) / (t_enc1 / nframes):.2f}")
    np.random.seed(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
