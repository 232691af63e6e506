"""Planning cost per frame of the `dynamic` planner: CLIP image embedding + plan, on the CPU.

Usage:
    .venv/bin/python bench/plan_cost.py [--frames 64] [--repeats 5] [--height 360 --width 640]

Frames are synthetic uint8 (4 colour scenes plus noise, 360x640 like a decoded 360p video). Random
open_clip weights (no downloads here); the cost of a forward pass does not depend on the weights.
Prints median milliseconds per frame over `--repeats` runs, after one warm-up run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.clip_embed import TINY_CLIP, ClipEmbedder  # noqa: E402
from model.dynamic import plan_dynamic  # noqa: E402


def make_frames(num: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    colours = np.array([(220, 30, 30), (30, 200, 40), (40, 40, 220), (230, 220, 30)], np.float32)
    scene = np.minimum(np.arange(num) * len(colours) // num, len(colours) - 1)
    frames = colours[scene][:, None, None, :] + rng.normal(0, 12, (num, height, width, 3)).astype(np.float32)
    return np.clip(frames, 0, 255).astype(np.uint8)  # (F, H, W, 3)


def measure(model_name: str, frames: np.ndarray, repeats: int, batch_size: int) -> dict:
    emb_model = ClipEmbedder(model_name, device="cpu", batch_size=batch_size)
    embed_ms, plan_ms = [], []
    for run in range(repeats + 1):
        t0 = time.perf_counter()
        emb = emb_model.embed_images(frames)
        t1 = time.perf_counter()
        plan = plan_dynamic(emb, tokens_per_frame=144, window_tokens=1440)
        t2 = time.perf_counter()
        if run:  # run 0 warms up
            embed_ms.append((t1 - t0) * 1e3 / len(frames))
            plan_ms.append((t2 - t1) * 1e3 / len(frames))
    return {
        "model": model_name,
        "embed": statistics.median(embed_ms),
        "plan": statistics.median(plan_ms),
        "total": statistics.median(e + p for e, p in zip(embed_ms, plan_ms, strict=True)),
        "windows": len(plan.windows),
        "boundaries": len(plan.extras["boundaries"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--models", default=f"{TINY_CLIP},ViT-B-32")
    args = ap.parse_args()

    frames = make_frames(args.frames, args.height, args.width)
    print(
        f"# {args.frames} frames {args.height}x{args.width}, batch {args.batch_size}, median of {args.repeats}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print("| model | embed ms/frame | plan ms/frame | total ms/frame | windows | boundaries |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        r = measure(name, frames, args.repeats, args.batch_size)
        print(
            f"| {r['model']} | {r['embed']:.2f} | {r['plan']:.3f} | {r['total']:.2f} | "
            f"{r['windows']} | {r['boundaries']} |"
        )


if __name__ == "__main__":
    main()
