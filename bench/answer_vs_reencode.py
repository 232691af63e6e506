"""Answer from the archive vs re-encode from the file, side by side (issue 5; issue 6 top-windows).

    .venv/bin/python bench/answer_vs_reencode.py [--minutes 1 10 60] [--ratio 16] [--repeats 5]
        [--reencode-repeats 3] [--top-windows 8] [--max-new-tokens 16] [--json OUT.json]

For each length it writes a sample video (tasks.samples, H.264, 1 fps source, 64x64 px: cheap to
make and decode, every source frame sampled at `--fps 1` with `--max-frames` raised to the whole
video), then measures, with the tiny model on this machine's device (CPU, fp32 here):

- re-encode TTFT: decode (decord) + plan + encode (vision tower + VST passes) + question prefill,
  the first-token time Video-XL pays for every question;
- archive TTFT: `tasks.ask.ask_video` on an open archive: read the committed rows, read and verify
  the K/V blobs, question prefill (no video I/O, no vision tower);
- its limit `KV bytes / raw read throughput + question-only prefill`, where the raw read throughput
  is `readinto` of a file holding the same bytes (page cache warm, as the archive's files are after
  the first read) and the prefill is `vx.answer(memory, q, 1)` on the loaded memory;
- for the longest video, archive TTFT with `--top-windows K` (CLIP-selected windows) vs the full memory.

Re-encode runs `--reencode-repeats` times on videos of at most 1 minute and once on longer ones
(a 60-minute re-encode takes minutes on a CPU); archive measurements run `--repeats` times after
one warm-up. Medians are printed. The ratio `--ratio` is 16 by default because the tiny model's
context (32,768 tokens) holds a 60-minute, 1 fps memory only at ratio >= 16 (ratio 8: 64,814 tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTION = "What happens in the video after the red circle appears?"


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def make_video(folder: Path, minutes: float, width: int, height: int, seed: int) -> Path:
    from tasks.samples import make_sample_videos

    sub = folder / f"m{minutes:g}"
    return make_sample_videos(sub, count=1, seconds=60.0 * minutes, fps=1, width=width, height=height, seed=seed)[0]


def reencode_once(vx, path: Path, fps: float, max_frames: int, ratio: int, question: str, max_new_tokens: int):
    """decode + plan + encode + answer: (ttft_s, parts dict, memory, decoded, plan)."""
    from tasks.video import decode

    t0 = time.perf_counter()
    dec = decode(path, fps=fps, max_frames=max_frames)
    t1 = time.perf_counter()
    plan = vx.plan(dec.frames, ratio=ratio)
    memory = vx.encode(dec.frames, plan, timestamps=dec.timestamps)
    t2 = time.perf_counter()
    ans = vx.answer(memory, question, max_new_tokens=max_new_tokens)
    ttft = (t2 - t0) + ans.ttft_s
    return ttft, {"decode_s": t1 - t0, "encode_s": t2 - t1, "prefill_s": ans.ttft_s}, memory, dec, plan, ans


def index(archive, vx, clip, path: Path, dec, plan, memory) -> str:
    """Put the memory made by the re-encode run into the archive, with window embeddings."""
    from model.dynamic import window_mean_embeddings
    from storage import VideoRecord
    from tasks.video import video_id

    vid = video_id(path)
    embs = window_mean_embeddings(plan, clip.embed_images(dec.frames))  # (W, E)
    params = dict(plan.params, clip_model=clip.model_name)
    plan_json = json.dumps(dict(plan.to_dict(), params=params))
    rec = VideoRecord(video_id=vid, model_fingerprint=vx.fingerprint, model_name=vx.name, source_uri=str(path),
                      size_bytes=dec.size_bytes, duration_s=dec.duration_s, native_fps=dec.native_fps,
                      frame_count=dec.frame_count, width=dec.width, height=dec.height, codec=dec.codec,
                      sampled_frames=dec.indices.tolist(), sampled_times=dec.timestamps.tolist(), plan=plan_json)
    archive.put(rec, memory, window_embeddings=embs)
    return vid


def raw_read_throughput(memory, folder: Path, repeats: int) -> float:
    """Bytes/s of `readinto` of a file holding the memory's K/V bytes (page cache warm)."""
    data = memory.kv().contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes()
    f = folder / "raw_kv.bin"
    f.write_bytes(data)
    buf = bytearray(len(data))
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        with open(f, "rb", buffering=0) as fh:
            fh.readinto(buf)
        times.append(time.perf_counter() - t0)
    f.unlink()
    return len(data) / _median(times[1:])


def archive_ttft(archive, vx, vid: str, question: str, max_new_tokens: int, repeats: int,
                 top_windows: int | None = None) -> tuple[float, dict]:
    from tasks.ask import ask_video

    runs = []
    for _ in range(repeats + 1):  # first run warms caches and is dropped
        runs.append(ask_video(archive.uri, vid, question, max_new_tokens=max_new_tokens, top_windows=top_windows,
                              vx=vx, archive=archive))
    runs = runs[1:]
    return _median([r["ttft_s"] for r in runs]), {
        "load_s": _median([r["load_s"] for r in runs]),
        "select_s": _median([r["select_s"] for r in runs]),
        "model_ttft_s": _median([r["model_ttft_s"] for r in runs]),
        "memory_tokens": runs[0]["memory_tokens"],
        "kv_bytes": runs[0]["kv_bytes"],
        "windows": len(runs[0]["windows"]),
        "num_windows": runs[0]["num_windows"],
        "answer": runs[0]["answer"],
    }


def prefill_only(vx, memory, question: str, repeats: int) -> float:
    ts = [vx.answer(memory, question, max_new_tokens=1).ttft_s for _ in range(repeats + 1)]
    return _median(ts[1:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--ratio", type=int, default=16)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="archive-path repeats (after one warm-up)")
    ap.add_argument("--reencode-repeats", type=int, default=3, help="re-encode repeats for videos <= 1 minute")
    ap.add_argument("--top-windows", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--question", default=QUESTION)
    ap.add_argument("--workdir", default=None, help="folder for videos and the archive (default: a temp dir)")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)

    import torch

    from model import load_model
    from model.clip_embed import TINY_CLIP, ClipEmbedder
    from storage import open_archive

    work = Path(args.workdir or tempfile.mkdtemp(prefix="vxl-bench-ask-"))
    work.mkdir(parents=True, exist_ok=True)
    vx = load_model("tiny")
    clip = ClipEmbedder(TINY_CLIP)
    archive = open_archive(str(work / "archive"))
    machine = (f"{platform.node()}: {os.cpu_count()} cpus, torch {torch.__version__}, "
               f"device {vx.device}, dtype {vx.dtype}, threads {torch.get_num_threads()}")
    print(f"# {machine}", flush=True)
    results = []
    for i, minutes in enumerate(args.minutes):
        t = time.perf_counter()
        path = make_video(work, minutes, args.width, args.height, seed=i)
        gen_s = time.perf_counter() - t
        max_frames = int(minutes * 60 * args.fps) + 10
        n_re = args.reencode_repeats if minutes <= 1 else 1
        re_ttft, parts = [], []
        memory = dec = plan = None
        for r in range(n_re):
            ttft, p, mem, d, pl, _ = reencode_once(vx, path, args.fps, max_frames, args.ratio, args.question,
                                                   args.max_new_tokens)
            re_ttft.append(ttft)
            parts.append(p)
            if r == 0:
                memory, dec, plan = mem, d, pl
            print(f"  {minutes:g} min re-encode {r + 1}/{n_re}: ttft {ttft:.2f} s {p}", flush=True)
        vid = index(archive, vx, clip, path, dec, plan, memory)
        a_ttft, a = archive_ttft(archive, vx, vid, args.question, args.max_new_tokens, args.repeats)
        prefill = prefill_only(vx, memory, args.question, args.repeats)
        bps = raw_read_throughput(memory, work, args.repeats)
        limit = memory.nbytes / bps + prefill
        row = {
            "minutes": minutes, "frames": int(dec.frames.shape[0]), "windows": len(memory.windows),
            "memory_tokens": memory.num_tokens, "kv_bytes": memory.nbytes, "video_gen_s": gen_s,
            "reencode_runs": n_re, "reencode_ttft_s": _median(re_ttft),
            "reencode_decode_s": _median([p["decode_s"] for p in parts]),
            "reencode_encode_s": _median([p["encode_s"] for p in parts]),
            "archive_ttft_s": a_ttft, "archive_load_s": a["load_s"], "archive_prefill_s": a["model_ttft_s"],
            "prefill_only_s": prefill, "raw_read_Bps": bps, "limit_s": limit,
            "speedup": _median(re_ttft) / a_ttft, "over_limit": a_ttft / limit,
        }
        if i == len(args.minutes) - 1 and args.top_windows is not None:
            k_ttft, k = archive_ttft(archive, vx, vid, args.question, args.max_new_tokens, args.repeats,
                                     top_windows=args.top_windows)
            row.update(topk=args.top_windows, topk_ttft_s=k_ttft, topk_select_s=k["select_s"],
                       topk_load_s=k["load_s"], topk_prefill_s=k["model_ttft_s"], topk_windows=k["windows"],
                       topk_memory_tokens=k["memory_tokens"], full_over_topk=a_ttft / k_ttft)
        results.append(row)
        print(f"  {minutes:g} min: {json.dumps(row)}", flush=True)

    print()
    print("| video | frames | windows | memory tokens | KV MiB | re-encode TTFT s (runs) | archive TTFT s "
          "| load s | prefill s | limit s | speedup | archive / limit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['minutes']:g} min | {r['frames']} | {r['windows']} | {r['memory_tokens']} | "
              f"{r['kv_bytes'] / 2**20:.1f} | {r['reencode_ttft_s']:.2f} ({r['reencode_runs']}) | "
              f"{r['archive_ttft_s']:.4f} | {r['archive_load_s']:.4f} | {r['archive_prefill_s']:.4f} | "
              f"{r['limit_s']:.4f} | {r['speedup']:.0f}x | {r['over_limit']:.2f}x |")
    last = results[-1]
    if "topk" in last:
        print()
        print("| video | memory | windows | memory tokens | TTFT s | select s | load s | prefill s |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| {last['minutes']:g} min | full | {last['windows']} | {last['memory_tokens']} | "
              f"{last['archive_ttft_s']:.4f} | 0 | {last['archive_load_s']:.4f} | {last['archive_prefill_s']:.4f} |")
        print(f"| {last['minutes']:g} min | top-{last['topk']} | {last['topk_windows']} | "
              f"{last['topk_memory_tokens']} | {last['topk_ttft_s']:.4f} | {last['topk_select_s']:.4f} | "
              f"{last['topk_load_s']:.4f} | {last['topk_prefill_s']:.4f} |")
        print(f"full / top-{last['topk']} TTFT: {last['full_over_topk']:.2f}x")
    print("raw read throughput (median): " + ", ".join(f"{r['minutes']:g} min {r['raw_read_Bps'] / 1e9:.2f} GB/s"
                                                        for r in results))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"machine": machine, "args": vars(args), "results": results},
                                                  indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
