"""Encode throughput and peak memory of the model (issue 2 benchmark).

CPU (tiny model): frames/s and peak RSS growth for 32 / 128 / 512 frames.
GPU (`--gpu`, when a device is lent): Video-XL-7B shapes with random weights in bf16, SDPA, at 128 /
512 / 2048 frames, ratio 16: frames/s, peak GPU memory, KV bytes per frame, against the paper's
claim of 2048 frames on one 80 GB A100.

    .venv/bin/python bench/model_encode.py            # CPU, tiny
    .venv/bin/python bench/model_encode.py --gpu      # GPU, 7B shapes
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_cpu(frame_counts=(32, 128, 512), repeats=3, ratio=8):
    from model import load_model

    vx = load_model("tiny", device="cpu")
    rows = []
    for n in frame_counts:
        frames = np.random.default_rng(n).integers(0, 256, (n, 336, 336, 3), dtype=np.uint8)
        plan = vx.plan(frames, ratio=ratio)
        rss0 = _rss_mib()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            mem = vx.encode(frames, plan)
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        rows.append(dict(frames=n, ratio=ratio, seconds=med, fps=n / med, kv_bytes=mem.nbytes,
                         kv_per_frame=mem.nbytes / n, peak_rss_growth_mib=_rss_mib() - rss0,
                         frames_mib=frames.nbytes / 2**20))
    return rows


def qwen2_7b_config():
    """Video-XL-7B geometry (VIDEO_XL.md section 1) with the real CLIP ViT-L/14-336 tower."""
    from model.config import KNOWN_VISION_TOWERS, VideoXLConfig

    known = KNOWN_VISION_TOWERS["openai/clip-vit-large-patch14-336"]
    return VideoXLConfig(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1e6,
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151645,
        mm_hidden_size=1024, mm_vision_tower="openai/clip-vit-large-patch14-336",
        vision_config=dict(known["config"]), image_processor=dict(known["preprocessor"]),
    )


def build_random_7b(device="cuda", dtype=torch.bfloat16):
    """Random-weight Video-XL-7B on `device` (no download: weights are N(0, 0.02) drawn on the device)."""
    from model.checkpoint import _materialize
    from model.modeling import VideoXLForCausalLM
    from model.tokenizer import tiny_tokenizer
    from model.video_xl import VideoXL

    cfg = qwen2_7b_config()
    cfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = VideoXLForCausalLM(cfg)
    model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02, generator=g)
    model.to(dtype)
    _materialize(model, torch.device(device))
    model.eval()
    return VideoXL(model, tiny_tokenizer(), "videoxl-7b-random", "random", vision_batch_frames=16)


def bench_gpu(frame_counts=(128, 512, 2048), ratio=16, repeats=2):
    vx = build_random_7b()
    rows = []
    for n in frame_counts:
        frames = torch.randint(0, 256, (n, 336, 336, 3), dtype=torch.uint8)
        plan = vx.plan(n, ratio=ratio)
        times = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            mem = vx.encode(frames, plan)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        rows.append(dict(frames=n, ratio=ratio, seconds=med, fps=n / med, kv_bytes=mem.nbytes,
                         kv_per_frame=mem.nbytes / n, peak_gpu_gib=torch.cuda.max_memory_allocated() / 2**30))
        del mem
    return rows


def print_table(rows, title):
    print(f"\n{title}")
    keys = list(rows[0])
    print(" | ".join(f"{k:>18}" for k in keys))
    for r in rows:
        print(" | ".join(f"{v:>18.3f}" if isinstance(v, float) else f"{v:>18}" for v in r.values()))
    base = rows[0]["fps"]
    print("throughput ratio vs smallest: " + ", ".join(f"{r['frames']}f {r['fps'] / base:.2f}x" for r in rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--frames", type=int, nargs="*")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if a.gpu:
        print_table(bench_gpu(tuple(a.frames or (128, 512, 2048)), repeats=a.repeats), "Video-XL-7B shapes, bf16, GPU")
    else:
        print_table(bench_cpu(tuple(a.frames or (32, 128, 512)), repeats=a.repeats), "tiny model, fp32, CPU")


if __name__ == "__main__":
    main()
