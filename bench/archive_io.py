"""Archive I/O benchmark: `Archive.load_memory` vs `numpy.fromfile` of the same bytes.

For memories of 4 MiB and 64 MiB (bf16, Video-XL-7B geometry: L=28, Hkv=4, D=128, 8 windows) it
measures, side by side in one run:
  * load throughput, cold (page cache dropped for the files concerned with
    posix_fadvise(DONTNEED)) and warm: `load_memory` (all windows, checksums verified) vs
    `numpy.fromfile` of one raw file per blob holding exactly the same bytes;
  * write throughput: `Archive.put` vs `ndarray.tofile` + fsync;
  * archive bytes on disk (vst_kv table, after compaction) / raw K/V bytes.
Prints medians and ratios. Usage:

    .venv/bin/python bench/archive_io.py [--repeats 7] [--videos 3] [--dir /tmp/vxl-bench]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.memory import VSTMemory, WindowSpan  # noqa: E402
from storage import VideoRecord, open_archive  # noqa: E402

L, HKV, D = 28, 4, 128
BYTES_PER_TOKEN = L * 2 * HKV * D * 2  # bf16: 56 KiB
FP = "b" * 64


def make_memory(mib: int, seed: int, windows: int = 8, sink: int = 14) -> VSTMemory:
    total = mib * 2**20 // BYTES_PER_TOKEN
    per = max(1, (total - sink) // windows)
    g = torch.Generator().manual_seed(seed)

    def rnd(t):
        return torch.randn((L, 2, HKV, t, D), generator=g).to(torch.bfloat16)  # (L, 2, Hkv, T, D)

    spans = [WindowSpan(i, 10 * i, 10 * i + 10, 8, per, 0, 10.0 * i, 10.0 * i + 9.5) for i in range(windows)]
    return VSTMemory(rnd(sink), [rnd(per) for _ in spans], spans, fingerprint=FP)


def drop_cache(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--videos", type=int, default=3, help="videos per size (loads rotate over them)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 64], help="memory sizes, MiB")
    ap.add_argument("--dir", default=None, help="work folder (default: a temp folder, removed after)")
    args = ap.parse_args()

    work = Path(args.dir or tempfile.mkdtemp(prefix="vxl-bench-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    arch = open_archive(work / "arch")
    raw_root = work / "raw"
    raw_root.mkdir()
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cpu, python {platform.python_version()}, "
          f"torch {torch.__version__}, work dir {work}")

    results = []  # (label, archive value, raw value, unit)
    total_kv = 0
    for mib in args.sizes:
        mems, raw_files = [], []
        put_t, raw_w_t = [], []
        for v in range(args.videos):
            mem = make_memory(mib, seed=1000 * mib + v)
            vid = f"bench-{mib}-{v}"
            mems.append((vid, mem))
            total_kv += mem.nbytes
            t0 = time.perf_counter()
            arch.put(VideoRecord(video_id=vid, model_fingerprint=FP, model_name="bench"), mem)
            put_t.append(time.perf_counter() - t0)
            files = []
            t0 = time.perf_counter()
            for k, t in enumerate([mem.sink, *mem.window_kv]):
                p = raw_root / f"{vid}-{k}.bin"
                a = t.contiguous().view(-1).view(torch.uint8).numpy()
                with open(p, "wb") as f:
                    a.tofile(f)
                    f.flush()
                    os.fsync(f.fileno())
                files.append(p)
            raw_w_t.append(time.perf_counter() - t0)
            raw_files.append(files)
        nbytes = mems[0][1].nbytes
        # put includes Lance's own fsync-free commit; raw includes fsync: report both as-is
        results.append((f"write {mib} MiB (MB/s)", nbytes / statistics.median(put_t) / 1e6,
                        nbytes / statistics.median(raw_w_t) / 1e6))

        kv_files = files_under(work / "arch" / "vst_kv.lance")

        def load_archive(i, mems=mems):
            vid, _ = mems[i % len(mems)]
            return arch.load_memory(vid, FP)

        def load_raw(i, raw_files=raw_files):
            return [np.fromfile(p, dtype=np.uint8) for p in raw_files[i % len(raw_files)]]

        got = load_archive(0)
        assert got.equal(mems[0][1]), "round trip failed"
        for mode in ("cold", "warm"):
            ta, tr = [], []
            for i in range(args.repeats):
                for fn, acc in ((load_archive, ta), (load_raw, tr)):
                    if mode == "cold":
                        drop_cache(kv_files + [p for fs in raw_files for p in fs])
                    else:
                        fn(i)  # warm-up read of the same video
                    t0 = time.perf_counter()
                    fn(i)
                    acc.append(time.perf_counter() - t0)
            results.append((f"load {mib} MiB {mode} (MB/s)", nbytes / statistics.median(ta) / 1e6,
                            nbytes / statistics.median(tr) / 1e6))
            results.append((f"load {mib} MiB {mode} (ms)", 1e3 * statistics.median(ta), 1e3 * statistics.median(tr)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        arch.compact(older_than=timedelta(0), garbage_grace=timedelta(0))
    disk = arch.stats()["disk_bytes"]
    raw_disk = sum(p.stat().st_size for p in files_under(raw_root))

    print(f"\n{'measure':<28} {'archive':>10} {'raw numpy':>10} {'ratio':>7}")
    for label, a, r, in results:
        ratio = a / r
        print(f"{label:<28} {a:>10.1f} {r:>10.1f} {ratio:>7.2f}")
    print(f"\nraw K/V bytes: {total_kv}  (raw files on disk {raw_disk})")
    print(f"vst_kv table on disk: {disk['vst_kv']}  -> overhead {100 * (disk['vst_kv'] / total_kv - 1):+.3f}%")
    print(f"whole archive on disk: {sum(disk.values())}  -> {sum(disk.values()) / total_kv:.4f}x raw")
    if args.dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
