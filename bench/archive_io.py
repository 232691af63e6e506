"""Archive I/O benchmark: `Archive.load_memory` per K/V codec vs `numpy.fromfile` of the raw bytes.

For memories of 4 MiB and 64 MiB (bf16, Video-XL-7B geometry: L=28, Hkv=4, D=128, 8 windows, a
14-token sink) it measures, side by side in one run, for `numpy.fromfile` of one raw file per blob
and for one archive per codec (`--codecs`, default raw, int8, int4) holding the same memories:
  * load time and throughput (raw MB of K/V delivered per second), cold (page cache dropped for
    every file concerned with posix_fadvise(DONTNEED)) and warm: `load_memory` (all windows,
    checksums verified, quantized rows dequantized to bf16 on the CPU) vs `fromfile`;
  * write throughput: `Archive.put` (quantization included) vs `ndarray.tofile` + fsync;
  * bytes on disk (vst_kv table, after compaction) / raw K/V bytes, per codec;
  * dequantization alone (VXKV blobs already in memory -> bf16 tensors), MB/s of bf16 produced.
Prints medians and ratios (to the `raw` codec). Usage:

    .venv/bin/python bench/archive_io.py [--repeats 7] [--videos 3] [--codecs raw int8 int4] [--threads N]
                                         [--device cuda]

With `--device cuda` the archive loads put the memory on the GPU (`load_memory(device=...)`: quantized
rows are copied there as codes and dequantized there; raw rows are copied as they are), and the
dequantization row times GPU decoding (synchronized).
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
from storage import VideoRecord, kvcodec, open_archive  # noqa: E402

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


def check_round_trip(got: VSTMemory, mem: VSTMemory, name: str) -> None:
    if name == "raw":
        assert got.equal(mem), "raw round trip is not bit-exact"
        return
    c = kvcodec.KV_CODECS[name]
    for t, g in zip(mem.window_kv, got.window_kv, strict=True):
        bound = kvcodec.group_error_bound(kvcodec.encode_tensor(t, c))
        err = (t.float() - g.float()).abs()
        assert bool((err <= bound * 1.001 + 2.0**-7 * g.float().abs() + 1e-6).all()), f"{name}: error over bound"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--videos", type=int, default=3, help="videos per size (loads rotate over them)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 64], help="memory sizes, MiB")
    ap.add_argument("--codecs", nargs="+", default=["raw", "int8", "int4"], help="K/V codecs (storage.kvcodec)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu", help="where loads deliver the memory (cpu, cuda)")
    ap.add_argument("--dir", default=None, help="work folder (default: a temp folder, removed after)")
    args = ap.parse_args()
    dev = torch.device(args.device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()
    if args.threads:
        torch.set_num_threads(args.threads)
    codecs = list(dict.fromkeys(["raw", *args.codecs]))  # raw is the reference column

    work = Path(args.dir or tempfile.mkdtemp(prefix="vxl-bench-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    archs = {(c, mib): open_archive(work / f"arch-{c}-{mib}") for c in codecs for mib in args.sizes}
    raw_root = work / "raw"
    raw_root.mkdir()
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cpu, python {platform.python_version()}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {dev}, load average "
          f"{os.getloadavg()[0]:.1f}, work dir {work}")

    cols = ["numpy", *codecs]
    results: list[tuple[str, dict[str, float]]] = []
    total_kv = 0
    for mib in args.sizes:
        mems, raw_files = [], []
        put_t: dict[str, list[float]] = {c: [] for c in cols}
        for v in range(args.videos):
            mem = make_memory(mib, seed=1000 * mib + v)
            vid = f"bench-{mib}-{v}"
            mems.append((vid, mem))
            total_kv += mem.nbytes
            for c in codecs:
                t0 = time.perf_counter()
                archs[c, mib].put(VideoRecord(video_id=vid, model_fingerprint=FP, model_name="bench"), mem,
                                  kv_codec=c)
                put_t[c].append(time.perf_counter() - t0)
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
            put_t["numpy"].append(time.perf_counter() - t0)
            raw_files.append(files)
        nbytes = mems[0][1].nbytes
        # put includes Lance's own fsync-free commit (and quantization); numpy includes fsync: as-is
        results.append((f"write {mib} MiB (MB/s)", {c: nbytes / statistics.median(put_t[c]) / 1e6 for c in cols}))

        all_files = [p for fs in raw_files for p in fs] + [
            p for c in codecs for p in files_under(work / f"arch-{c}-{mib}" / "vst_kv.lance")]

        def loader(c, mems=mems, raw_files=raw_files, mib=mib):
            if c == "numpy":
                return lambda nth: [np.fromfile(p, dtype=np.uint8) for p in raw_files[nth % len(raw_files)]]
            return lambda nth: archs[c, mib].load_memory(mems[nth % len(mems)][0], FP, device=dev)

        fns = {c: loader(c) for c in cols}
        for c in codecs:
            check_round_trip(fns[c](0).to("cpu"), mems[0][1], c)
        for mode in ("cold", "warm"):
            times: dict[str, list[float]] = {c: [] for c in cols}
            for i in range(args.repeats):
                for c in cols:
                    if mode == "cold":
                        drop_cache(all_files)
                    else:
                        fns[c](i)  # warm-up read of the same video
                    t0 = time.perf_counter()
                    fns[c](i)
                    sync()
                    times[c].append(time.perf_counter() - t0)
            med = {c: statistics.median(times[c]) for c in cols}
            results.append((f"load {mib} MiB {mode} (ms)", {c: 1e3 * med[c] for c in cols}))
            results.append((f"load {mib} MiB {mode} (MB/s)", {c: nbytes / med[c] / 1e6 for c in cols}))
        # dequantization alone: the blobs of one memory, already in memory
        deq = {}
        for c in codecs:
            if c == "raw":
                continue
            blobs = [kvcodec.encode_tensor(t, kvcodec.KV_CODECS[c]) for t in mems[0][1].window_kv]
            ts = []
            for _ in range(max(3, args.repeats)):
                t0 = time.perf_counter()
                for b in blobs:
                    kvcodec.decode_tensor(b, device=dev)
                sync()
                ts.append(time.perf_counter() - t0)
            win_bytes = sum(t.numel() * 2 for t in mems[0][1].window_kv)
            deq[c] = win_bytes / statistics.median(ts) / 1e6
        if deq:
            results.append((f"dequantize {mib} MiB (MB/s bf16)", deq))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for a in archs.values():
            a.compact(older_than=timedelta(0), garbage_grace=timedelta(0))
    raw_disk = sum(p.stat().st_size for p in files_under(raw_root))
    disk = {k: a.stats()["disk_bytes"]["vst_kv"] for k, a in archs.items()}
    kv_of = {mib: args.videos * make_memory(mib, seed=0).nbytes for mib in args.sizes}

    print(f"\n{'measure':<32}" + "".join(f"{c:>11}" for c in cols) + "   " + "".join(
        f"{c + '/raw':>14}" for c in cols if c != "raw"))
    for label, vals in results:
        ref = vals.get("raw")
        line = f"{label:<32}" + "".join(f"{vals[c]:>11.1f}" if c in vals else f"{'':>11}" for c in cols) + "   "
        line += "".join(f"{vals[c] / ref:>14.2f}" if c in vals and ref else f"{'':>14}" for c in cols if c != "raw")
        print(line)
    print(f"\nraw K/V bytes: {total_kv}  (raw numpy files on disk {raw_disk})")
    print(f"{'codec':<10} {'size':>6} {'vst_kv on disk':>15} {'/ raw K/V':>10}")
    for mib in args.sizes:
        for c in codecs:
            print(f"{c:<10} {mib:>3} MiB {disk[c, mib]:>15} {disk[c, mib] / kv_of[mib]:>10.4f}")
    for mib in args.sizes:
        m = make_memory(mib, seed=0)
        for c in codecs:
            kvc = kvcodec.KV_CODECS[c]
            if kvc.entropy is None:  # every registered codec stores the sink raw
                enc = m.sink.numel() * 2 + sum(kvcodec.encoded_nbytes(kvc, t.shape, t.dtype) for t in m.window_kv)
                print(f"  {mib} MiB memory, {c}: blob bytes / raw {enc / m.nbytes:.4f} "
                      f"({len(m.window_kv)} windows of {m.windows[0].num_vst} VSTs + {m.sink_tokens}-token raw sink)")
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")
    if args.dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
