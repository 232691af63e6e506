"""Archive maintenance at library scale: peak memory and time of `verify`, `stats`, `compact` and
the skip check (`indexed_ids`) on a synthetic archive (issue 15: 100,000 videos x 30 windows).

Each operation runs in a fresh Python process that opens the archive, resets its peak RSS
(`/proc/self/clear_refs`), runs the operation once and reads the peak (`VmHWM`): `delta` is what the
operation itself added over the RSS it started with. `load tables` is the reference: the two whole-table reads the pre-streaming `verify`
started with (`videos` with every column, `vst_kv` metadata with the CLIP embeddings, as Python
rows), i.e. a lower bound of the old implementation's memory.

The synthetic archive is made of real `Archive.put` rows (`storage.archive.prepare_write`: the
same checksums, sizes and records), written in bulk (one Lance commit per chunk of videos, not one
per video). Memories are small (2 layers, 1 KV head, head_dim 8, 4 VSTs per window, fp16: 256 B
per window blob); the CLIP embeddings are full size (512 floats per window, ViT-B/32) and the plan
JSON is a real 30-window plan's size, because those are what whole-table reads paid for.

    python bench/archive_maintenance.py --videos 100000 --windows 30 --out /tmp/arch100k
    python bench/archive_maintenance.py --videos 10000 --ops verify,stats,compact,ids,load_tables
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FP = "f" * 64
OPS = ("verify", "stats", "compact", "ids", "load_tables")


def _memory(windows: int, seed: int):
    import torch

    from model.memory import VSTMemory, WindowSpan

    g = torch.Generator().manual_seed(seed)

    def kv(t):  # (L, 2, Hkv, T, D)
        return torch.randn((2, 2, 1, t, 8), generator=g).to(torch.float16)

    spans = [WindowSpan(index=i, frame_start=10 * i, frame_end=10 * i + 10, ratio=8, num_vst=4, carry_in=0,
                        start_s=float(10 * i), end_s=10 * i + 9.5) for i in range(windows)]
    return VSTMemory(sink=kv(3), window_kv=[kv(4) for _ in range(windows)], windows=spans, fingerprint=FP)


def build_synthetic_archive(path: str | os.PathLike, videos: int, windows: int, *, embed_dim: int = 512,
                            chunk: int = 1000, seed: int = 0, progress: bool = False) -> dict:
    """Write `videos` indexed videos of `windows` windows each into a new archive at `path`.

    Returns:
        {"videos", "windows", "vst_kv_rows", "seconds"}.
    Raises:
        FileExistsError: `path` already holds something.
    """
    import numpy as np
    import pyarrow as pa

    from storage import open_archive
    from storage.archive import VideoRecord, _table_from_rows, prepare_write
    from storage.schema import VIDEOS_SCHEMA

    p = Path(path)
    if p.exists() and any(p.iterdir()):
        raise FileExistsError(f"{p}: not empty; give a new folder")
    t0 = time.perf_counter()
    arch = open_archive(p, create=True)
    mem = _memory(windows, seed)
    rng = np.random.default_rng(seed)
    plan = json.dumps({"planner": "dynamic", "windows": [
        {"frame_start": 10 * i, "frame_end": 10 * i + 10, "ratio": 8, "score": 0.123456} for i in range(windows)]})
    rows_total = 0
    for start in range(0, videos, chunk):
        recs, kvs = [], []
        for i in range(start, min(videos, start + chunk)):
            rec = VideoRecord(
                video_id=f"xxh3-128:{i:032x}", model_fingerprint=FP, model_name="synthetic",
                source_uri=f"/library/video_{i:06d}.mp4", size_bytes=50_000_000, duration_s=10.0 * windows,
                native_fps=30.0, frame_count=300 * windows, width=1280, height=720, codec="h264",
                sampled_frames=list(range(0, 300 * windows, 30)), sampled_times=[float(s) for s in range(10 * windows)],
                plan=plan, decode_s=1.0, plan_s=0.1, encode_s=5.0, indexer_version="bench")
            emb = rng.standard_normal((windows, embed_dim), dtype=np.float32) if embed_dim else None
            rec, kv = prepare_write(rec, mem, emb)
            recs.append(rec.to_row())
            kvs.append(kv)
        kv_all = pa.concat_tables(kvs)
        arch._table("vst_kv").add(kv_all)  # K/V rows first, then the commit of their videos rows
        arch._table("videos").add(_table_from_rows(recs, VIDEOS_SCHEMA))
        rows_total += kv_all.num_rows
        if progress:
            print(f"  built {min(videos, start + chunk)}/{videos} videos ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    return {"videos": videos, "windows": windows, "vst_kv_rows": rows_total,
            "seconds": round(time.perf_counter() - t0, 1)}


def _status_mb(field: str) -> float:
    """`VmRSS` / `VmHWM` of this process from /proc/self/status, in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Reset the peak RSS (`VmHWM`) to the current RSS (Linux >= 4.0: `clear_refs` value 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def _child(op: str, path: str) -> dict:
    """Run `op` once on the archive at `path` in this process; its time and peak-memory growth."""
    from storage import open_archive
    from storage.schema import VST_KV_META_COLUMNS

    arch = open_archive(path, create=False)
    import lance  # noqa: F401  (imported before the baseline)

    _reset_peak()
    base = _status_mb("VmRSS")
    t0 = time.perf_counter()
    if op == "verify":
        rep = arch.verify()
        out = {"ok": rep.ok, "videos_checked": rep.videos_checked, "blobs_checked": rep.blobs_checked,
               "problems": len(rep.problems)}
    elif op == "stats":
        st = arch.stats()
        out = {"indexed": st["indexed"], "vst_kv_rows": st["vst_kv_rows"]}
    elif op == "compact":
        res = arch.compact()
        out = {"garbage_rows_deleted": res["garbage_rows_deleted"]}
    elif op == "ids":
        out = {"indexed_ids": len(arch.indexed_ids(FP))}
    elif op == "load_tables":
        vids = arch._ds("videos").to_table().to_pylist()
        meta = arch._ds("vst_kv").to_table(columns=VST_KV_META_COLUMNS, with_row_id=True).to_pylist()
        out = {"videos_rows": len(vids), "vst_kv_rows": len(meta)}
    else:
        raise ValueError(f"unknown op {op!r}; one of {', '.join(OPS)}")
    return {"op": op, "seconds": round(time.perf_counter() - t0, 2), "baseline_mb": round(base, 1),
            "peak_mb": round(_status_mb("VmHWM"), 1), "delta_mb": round(_status_mb("VmHWM") - base, 1), **out}


def measure(op: str, path: str | os.PathLike, timeout: float = 3600) -> dict:
    """`_child(op, path)` in a fresh interpreter (so peaks do not mix). Raises CalledProcessError."""
    res = subprocess.run([sys.executable, __file__, "--child", op, str(path)], capture_output=True, text=True,
                         timeout=timeout, check=True, cwd=ROOT)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=10_000)
    ap.add_argument("--windows", type=int, default=30)
    ap.add_argument("--embed-dim", type=int, default=512)
    ap.add_argument("--out", default=None, help="archive folder (built when missing or empty)")
    ap.add_argument("--ops", default="ids,stats,verify,compact,load_tables")
    ap.add_argument("--child", nargs=2, metavar=("OP", "PATH"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(_child(*a.child)))
        return
    path = Path(a.out or f"/tmp/vxl-synthetic-{a.videos}x{a.windows}")
    if not (path.exists() and any(path.iterdir())):
        built = build_synthetic_archive(path, a.videos, a.windows, embed_dim=a.embed_dim, progress=True)
        print(f"built {built}", file=sys.stderr)
    rows = []
    for op in a.ops.split(","):
        try:
            rows.append(measure(op, path))
        except subprocess.CalledProcessError as exc:  # e.g. killed for memory: say so in the table
            rows.append({"op": op, "error": f"exit {exc.returncode}: {exc.stderr.strip().splitlines()[-1:]}"})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"\n{a.videos} videos x {a.windows} windows, {a.embed_dim}-float CLIP embeddings, {path}\n")
    print("| operation | time (s) | peak RSS growth (MB) | peak RSS (MB) | result |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['op']} | - | - | - | {r['error']} |")
            continue
        res = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("op", "seconds", "baseline_mb", "peak_mb", "delta_mb"))
        print(f"| {r['op']} | {r['seconds']} | {r['delta_mb']} | {r['peak_mb']} | {res} |")


if __name__ == "__main__":
    main()
