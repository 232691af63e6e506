"""Training throughput on Ray Train (CPU): samples/s, visual tokens/s and peak RSS per worker, with 1
and 2 workers (DDP, gloo), with and without `--grad-checkpointing`, side by side.

    .venv/bin/python bench/train_throughput.py [--count 16] [--max-frames 64] [--steps 8] [--warmup 2]
        [--batch-size 4] [--questions-per-sample 4] [--workers 1,2] [--ray-address ADDR]

Every configuration is a fresh `run_training` (`tasks.train_ray`) of the toy model on the same
prepared toy data (one frame cache), in its own run folder; Ray is started once. Per configuration:
medians over the steps after the first `--warmup` of `train_log.jsonl` (samples/s is the global
batch over the step's wall time on rank 0, all-reduce included); visual tokens/s = frames/s x the
model's tokens per frame (what the vision tower, projector and LLM windows process); peak RSS = the
largest resident memory of any worker (`getrusage` ru_maxrss, model load included); wall = the whole
run, worker start-up included. Each Ray Train worker gets one CPU (one torch thread), so 2 workers
use 2 cores. Prints a markdown table and the command.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=16, help="toy videos")
    ap.add_argument("--max-frames", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    ap.add_argument("--batch-size", type=int, default=4, help="global batch (a multiple of every --workers)")
    ap.add_argument("--questions-per-sample", type=int, default=4)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--ray-address", default=None)
    ap.add_argument("--out", default=None, help="folder for the runs (default: a temporary folder, deleted)")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import numpy as np

    from tasks.ray_runtime import ensure_ray, shutdown_if_started
    from tasks.train import TrainConfig, load_for_training, prepare_data
    from tasks.train_ray import read_log, run_training

    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    if args.warmup >= args.steps:
        ap.error("--warmup must be smaller than --steps")
    tmp = tempfile.TemporaryDirectory(prefix="vxl-train-bench-") if args.out is None else None
    root = Path(args.out or tmp.name).resolve()
    base = dict(data=[f"toy:{args.count}"], steps=args.steps, batch_size=args.batch_size, max_frames=args.max_frames,
                questions_per_sample=args.questions_per_sample, checkpoint_every=0, warmup_steps=0,
                cache_dir=str(root / "cache"))
    cfg0 = TrainConfig(out=str(root / "prepare"), **base)
    vx = load_for_training(cfg0)
    tokens_per_frame = int(vx.config.tokens_per_frame)
    items = prepare_data(cfg0, vx=vx)
    frames = sum(int(np.load(i.frames, mmap_mode="r").shape[0]) for i in items)
    del vx

    info = ensure_ray(args.ray_address, include_dashboard=False)
    rows = []
    try:
        for w in workers:
            for gc in (False, True):
                cfg = TrainConfig(out=str(root / f"w{w}-gc{int(gc)}"), num_workers=w, grad_checkpointing=gc, **base)
                t0 = time.perf_counter()
                res = run_training(cfg, ray_address=args.ray_address, items=items)
                wall = time.perf_counter() - t0
                log = [x for x in read_log(cfg.out) if x["step"] > args.warmup]
                sps = statistics.median(x["samples_per_s"] for x in log)
                fps = statistics.median(x["frames_per_s"] for x in log)
                rows.append((w, gc, sps, fps * tokens_per_frame, max(x["peak_rss_mb"] for x in log), wall,
                             res["final_loss"]))
                print(f"done: {w} worker(s), grad checkpointing {'on' if gc else 'off'}: {sps:.2f} samples/s",
                      file=sys.stderr, flush=True)
    finally:
        shutdown_if_started(info)
        if tmp is not None:
            tmp.cleanup()

    print(f"toy model, {args.count} toy videos ({frames} frames at --max-frames {args.max_frames}), global batch "
          f"{args.batch_size}, {args.questions_per_sample} questions/sample, {args.steps} steps (medians of steps "
          f"{args.warmup + 1}..{args.steps}), {tokens_per_frame} visual tokens/frame, CPU ({os.cpu_count()} cores), "
          "one CPU thread per Ray Train worker\n")
    print("| workers | grad checkpointing | samples/s | visual tokens/s | peak RSS/worker (MiB) | wall (s) | final loss |")
    print("|---:|:---|---:|---:|---:|---:|---:|")
    for w, gc, sps, tps, rss, wall, loss in rows:
        print(f"| {w} | {'on' if gc else 'off'} | {sps:.2f} | {tps:,.0f} | {rss:,.0f} | {wall:.1f} | {loss:.4f} |")
    by = {(w, gc): sps for w, gc, sps, *_ in rows}
    for gc in (False, True):
        if (1, gc) in by and (2, gc) in by:
            print(f"\n2 vs 1 workers (grad checkpointing {'on' if gc else 'off'}): {by[(2, gc)] / by[(1, gc)]:.2f}x",
                  end="")
    print("\n\ncommand: .venv/bin/python bench/train_throughput.py " + shlex.join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
