"""The fast read path for K/V blobs: Lance blob v2 sidecar files read directly with `preadv`.

This is the one module of vxl that relies on a Lance internal: the on-disk layout of blob v2
columns (descriptor fields and sidecar file names, below). Everything here is a *hint*: every blob
read through it is checked by the caller against its row's size and xxh3 checksum
(`storage.codec.check_blob`), and `Archive.load_memory` re-reads through Lance's public
`read_blobs` when a check fails. Each such fall-back is counted (`counters()`) and logged as a
warning naming the video, because a steady stream of them means the layout assumption no longer
holds (a Lance upgrade) and every read now pays for two: the log line says so.

Why it exists: reading a 360-window memory through `read_blobs` costs one Lance call per window;
a memory's blobs lie one after another in one sidecar, so one `preadv` reads them all
(docs/PERFORMANCE.md, "load_memory").
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

log = logging.getLogger("vxl.storage.blobread")


@dataclass
class FastReadCounters:
    """Per-process counts of the fast read path (monotonic; `counters()` returns a copy).

    Attributes:
        direct_blobs: blobs read from a sidecar file with `preadv`.
        lance_blobs: blobs read through Lance `read_blobs` (no local location: inline in a multi-file
            fragment, object stores, or a verify scan).
        fallbacks: loads that failed on the fast path (stale location, removed sidecar, checksum
            mismatch) and were re-read through Lance only.
    """

    direct_blobs: int = 0
    lance_blobs: int = 0
    fallbacks: int = 0


_COUNTERS = FastReadCounters()
_LOCK = threading.Lock()


def counters() -> dict[str, int]:
    """A snapshot of this process's `FastReadCounters` as a dict."""
    with _LOCK:
        return asdict(_COUNTERS)


def _count(**inc: int) -> None:
    with _LOCK:
        for k, v in inc.items():
            setattr(_COUNTERS, k, getattr(_COUNTERS, k) + v)


def note_fallback(video_id: str, fingerprint: str, exc: BaseException) -> None:
    """Count and log one load that fell back from the fast path to Lance (called by `Archive.load_memory`)."""
    _count(fallbacks=1)
    log.warning(
        "vxl: fast blob read of %s (%s) failed (%s: %s); re-reading it through Lance. Occasional "
        "fall-backs follow compaction; if every load falls back, the Lance blob layout this path relies "
        "on has changed (storage/blobread.py): loads stay correct but read twice. Fall-backs so far in "
        "this process: %d", video_id, fingerprint[:16], type(exc).__name__, exc, counters()["fallbacks"])


def blob_location(ds, row: dict, local_root: str, frag_files: dict[int, str | None]) -> tuple[str, int, int] | None:
    """(file, offset, size) of a row's `kv` blob in a local Lance blob v2 file, or None.

    Lance blob v2 keeps each blob's descriptor in the data file (`kind`, `position`, `size`,
    `blob_id`): kind 0 = inline, the bytes at `position` in the data file itself (small blobs);
    kind 1 = packed in a shared sidecar, kind 2 = a dedicated sidecar, the bytes in
    `data/<data file stem>/<blob_id bit-reversed, as 32 binary digits>.blob`. Anything else
    (external blobs, object stores, several data files) gives None: Lance reads it.

    Args:
        ds: the `vst_kv` Lance dataset snapshot the row was scanned from.
        row: a scanned row with `kv` (the descriptor struct), `nbytes` and `_rowaddr`.
        local_root: the archive folder on the local file system.
        frag_files: a cache fragment id -> data file path (None: not a single local file), filled here.
    """
    desc = row.get("kv")
    if not isinstance(desc, dict) or desc.get("kind") not in (0, 1, 2) or desc.get("blob_uri"):
        return None
    if int(desc["size"]) != int(row["nbytes"]):
        return None
    frag = int(row["_rowaddr"]) >> 32
    if frag not in frag_files:
        path = None
        try:
            files = ds.get_fragment(frag).metadata.files
            if len(files) == 1 and getattr(files[0], "base_id", None) is None:
                path = files[0].path
        except (OSError, RuntimeError, ValueError, AttributeError):
            path = None
        frag_files[frag] = path
    path = frag_files[frag]
    if not path or not path.endswith(".lance") or "/" in path:
        return None
    data = os.path.join(local_root, "vst_kv.lance", "data")
    if int(desc["kind"]) == 0:  # inline: in the data file itself
        return (os.path.join(data, path), int(desc["position"]), int(desc["size"]))
    name = f"{int(desc['blob_id']) & 0xFFFFFFFF:032b}"[::-1] + ".blob"  # blob_id.reverse_bits()
    return (os.path.join(data, path[: -len(".lance")], name), int(desc["position"]), int(desc["size"]))


def pread_blobs(locations: list[tuple[str, int, int]]) -> list[np.ndarray]:
    """Read each (file, offset, size) as a uint8 array, in the order given.

    Ranges of one file that touch or overlap are read with one `preadv` into one buffer and returned
    as views of it (a memory's windows are written one after another, so a whole memory is usually
    one read per file instead of one per window: 360 windows of a 60-minute video -> 1 read).

    Raises:
        OSError: a file that cannot be opened, or a range outside the file (checked against the
            file's size before the buffer is allocated).
    """
    out: list[np.ndarray | None] = [None] * len(locations)
    order = sorted(range(len(locations)), key=lambda i: (locations[i][0], locations[i][1]))
    groups: list[tuple[str, int, int, list[int]]] = []  # (path, start, end, members)
    for i in order:
        path, offset, size = locations[i]
        if groups and groups[-1][0] == path and offset <= groups[-1][2]:
            g = groups[-1]
            groups[-1] = (path, g[1], max(g[2], offset + size), g[3] + [i])
        else:
            groups.append((path, offset, offset + size, [i]))
    fds: dict[str, int] = {}
    try:
        for path, start, end, members in groups:
            fd = fds.get(path)
            if fd is None:
                fd = fds[path] = os.open(path, os.O_RDONLY)
            if start < 0 or end > os.fstat(fd).st_size:  # a bad location never sizes an allocation
                raise OSError(f"{path}: blob range {start}..{end} lies outside the file ({os.fstat(fd).st_size} bytes)")
            buf = np.empty(end - start, dtype=np.uint8)  # (bytes,)
            view, done = memoryview(buf), 0
            while done < end - start:
                n = os.preadv(fd, [view[done:]], start + done)
                if n <= 0:
                    raise OSError(f"{path}: blob range ends after {done} of {end - start} bytes")
                done += n
            for i in members:
                _, offset, size = locations[i]
                out[i] = buf[offset - start : offset - start + size]  # a view: no copy
    finally:
        for fd in fds.values():
            os.close(fd)
    return out


def read_blobs(ds, rows: list[dict]) -> list[Any]:
    """The `kv` bytes of `rows`, in order: rows with a `_blob` location are read directly from
    their local file (`pread_blobs`), the others with Lance's `read_blobs` by row address (or row
    id). Nothing else is read; the caller checks sizes and checksums.

    Raises:
        OSError: a direct read failed; whatever Lance raises for its reads.
    """
    out: list[Any] = [None] * len(rows)
    direct = [i for i, r in enumerate(rows) if "_blob" in r]
    for i, buf in zip(direct, pread_blobs([rows[i]["_blob"] for i in direct]), strict=True):
        out[i] = buf
    rest = [i for i, r in enumerate(rows) if "_blob" not in r]
    if rest:
        if all("_rowaddr" in rows[i] for i in rest):
            got = ds.read_blobs("kv", addresses=[rows[i]["_rowaddr"] for i in rest], preserve_order=True)
        else:
            got = ds.read_blobs("kv", ids=[rows[i]["_rowid"] for i in rest], preserve_order=True)
        for i, (_, b) in zip(rest, got, strict=True):
            out[i] = b
    _count(direct_blobs=len(direct), lance_blobs=len(rest))
    return out
