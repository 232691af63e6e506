"""`VSTMemory` <-> Arrow: raw little-endian K/V bytes, bit-exact for float32, float16 and bfloat16.

pyarrow, numpy, torch (and xxhash for checksums) only: this module works without lancedb, so a
memory written by the archive can be read back with plain pyarrow (docs/ARCHIVE_FORMAT.md).

One `vst_kv` row per window plus one row for the sink (`window = -1`, kind `sink`). Each row's
`kv` holds the bytes of a C-contiguous tensor of shape `(L, 2, Hkv, T, D)` in the memory's dtype,
exactly as `tensor.view(torch.uint8)` lays them out on a little-endian host (bf16 is kept as its
16 raw bits; nothing is converted). `checksum` is `"xxh3_128:" + hex digest` of those bytes.
Decoding is zero-copy: tensors are views over the buffers they were read from.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import torch
import xxhash

from model.memory import VSTMemory, WindowSpan
from storage.errors import CorruptBlob
from storage.schema import CHECKSUM_ALGO, SINK_WINDOW, VST_KV_SCHEMA

#: dtype name stored in `vst_kv.dtype` -> torch dtype.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}

_BufferLike = bytes | bytearray | memoryview | pa.Buffer | np.ndarray


_ITEMSIZE = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}
# Loaded blobs are immutable `bytes` that only the returned tensor references; torch warns on every
# `frombuffer` of a read-only buffer. Filtered once here (only that message) instead of per blob:
# the per-call `warnings.catch_warnings` cost ~10 us per window (measured, 360-window memory).
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)


def _check_host() -> None:
    if sys.byteorder != "little":  # pragma: no cover - no big-endian machines in this project
        raise NotImplementedError("the archive codec needs a little-endian host")


def dtype_name(dtype: torch.dtype) -> str:
    """Name stored for `dtype` ('float32', 'float16', 'bfloat16').

    Raises:
        ValueError: any other dtype.
    """
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        raise ValueError(f"unsupported K/V dtype {dtype}; use one of {sorted(DTYPES)}") from None


def checksum(buf: _BufferLike) -> str:
    """`'xxh3_128:<32 hex chars>'` of the raw bytes of `buf`."""
    if isinstance(buf, pa.Buffer):
        buf = memoryview(buf)
    return f"{CHECKSUM_ALGO}:{xxhash.xxh3_128_hexdigest(buf)}"


def tensor_bytes(t: torch.Tensor) -> np.ndarray:
    """Raw little-endian bytes of `t` as a 1-D uint8 numpy array (no copy for contiguous CPU tensors)."""
    _check_host()
    dtype_name(t.dtype)
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    return t.reshape(-1).view(torch.uint8).numpy()  # (nbytes,)


def tensor_from_bytes(buf: _BufferLike, dtype: str, shape: Sequence[int]) -> torch.Tensor:
    """Tensor of `dtype` ('float32' | 'float16' | 'bfloat16') and `shape` viewing `buf` (no copy).

    The tensor shares memory with `buf`. For an immutable `bytes` buffer that is only referenced by
    the tensor (what the archive returns) writing in place is harmless; clone before writing if
    `buf` is shared.

    Raises:
        ValueError: unknown dtype, or `len(buf)` does not match `shape`.
    """
    tdtype = DTYPES.get(dtype)
    if tdtype is None:
        raise ValueError(f"unsupported K/V dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    shape = tuple(int(s) for s in shape)
    nbytes = math.prod(shape) * _ITEMSIZE[tdtype]
    view = memoryview(buf) if not isinstance(buf, np.ndarray) else memoryview(buf.reshape(-1))
    if view.nbytes != nbytes:
        raise ValueError(f"{view.nbytes} bytes for a {dtype} tensor of shape {shape} ({nbytes} bytes)")
    if nbytes == 0:
        return torch.empty(shape, dtype=tdtype)
    flat = torch.frombuffer(view, dtype=torch.uint8)  # (nbytes,); read-only warning filtered at import
    return flat.view(tdtype).view(shape)  # (L, 2, Hkv, T, D)


def memory_to_arrow(
    memory: VSTMemory,
    *,
    video_id: str,
    fingerprint: str,
    write_id: str,
    window_embeddings: np.ndarray | None = None,
    written_at: datetime | None = None,
) -> pa.Table:
    """The `vst_kv` rows of `memory`: sink first (window -1), then one row per window, time order.

    Args:
        memory: the memory to store (any device; copied to CPU if needed).
        video_id, fingerprint, write_id: the row keys.
        window_embeddings: optional float32 `(num_windows, E)` per-window CLIP embeddings.
        written_at: time of the write (UTC, default now); `compact` uses it to age garbage.

    Returns:
        A table with schema `storage.schema.VST_KV_SCHEMA`; `kv` holds the raw bytes (one copy).

    Raises:
        ValueError: unsupported dtype, fingerprint disagreeing with `memory.fingerprint`, or
            embeddings of the wrong shape.
    """
    if memory.fingerprint is not None and memory.fingerprint != fingerprint:
        raise ValueError(
            f"video {video_id}: memory fingerprint {memory.fingerprint} != record fingerprint {fingerprint}"
        )
    dname = dtype_name(memory.dtype)
    nwin = len(memory.windows)
    emb: list[list[float] | None] = [None] * (nwin + 1)
    if window_embeddings is not None:
        e = np.asarray(window_embeddings, dtype=np.float32)
        if e.ndim != 2 or e.shape[0] != nwin:
            raise ValueError(f"window_embeddings must be (num_windows={nwin}, E), got {e.shape}")
        emb = [None, *(row for row in e)]
    tensors = [memory.sink, *memory.window_kv]
    raw = [tensor_bytes(t) for t in tensors]
    sizes = np.array([r.nbytes for r in raw], dtype=np.int64)
    offsets = np.zeros(len(raw) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    data = np.empty(int(offsets[-1]), dtype=np.uint8)
    for r, o in zip(raw, offsets[:-1], strict=True):
        data[o : o + r.nbytes] = r
    kv = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(raw), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    sums = [checksum(data[o : o + s]) for o, s in zip(offsets[:-1], sizes, strict=True)]
    spans: list[WindowSpan | None] = [None, *memory.windows]
    key = f"{video_id}/{fingerprint}"
    n = len(raw)

    def col(fn):
        return [fn(s) for s in spans]

    cols = {
        "key": [key] * n,
        "video_id": [video_id] * n,
        "model_fingerprint": [fingerprint] * n,
        "write_id": [write_id] * n,
        "window": col(lambda s: SINK_WINDOW if s is None else s.index),
        "kind": col(lambda s: "sink" if s is None else "window"),
        "frame_start": col(lambda s: None if s is None else s.frame_start),
        "frame_end": col(lambda s: None if s is None else s.frame_end),
        "start_s": col(lambda s: None if s is None else s.start_s),
        "end_s": col(lambda s: None if s is None else s.end_s),
        "ratio": col(lambda s: None if s is None else s.ratio),
        "carry_in": col(lambda s: None if s is None else s.carry_in),
        "num_tokens": [int(t.shape[3]) for t in tensors],
        "dtype": [dname] * n,
        "shape": [list(t.shape) for t in tensors],
        "nbytes": sizes.tolist(),
        "checksum": sums,
        "clip_embedding": emb,
        "written_at": [written_at or datetime.now(UTC)] * n,
    }
    arrays = [
        kv if f.name == "kv" else pa.array(cols[f.name], type=f.type) for f in VST_KV_SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=VST_KV_SCHEMA)


def span_from_row(row: dict) -> WindowSpan:
    """`WindowSpan` of one `vst_kv` window row (a dict of its columns)."""
    return WindowSpan(
        index=int(row["window"]),
        frame_start=int(row["frame_start"]),
        frame_end=int(row["frame_end"]),
        ratio=int(row["ratio"]),
        num_vst=int(row["num_tokens"]),
        carry_in=int(row["carry_in"] or 0),
        start_s=None if row["start_s"] is None else float(row["start_s"]),
        end_s=None if row["end_s"] is None else float(row["end_s"]),
    )


def decode_blob(row: dict, blob: _BufferLike | None, *, verify: bool = True) -> torch.Tensor:
    """Tensor of one `vst_kv` row from its metadata `row` and its `kv` bytes.

    Raises:
        CorruptBlob: missing blob, wrong size, or checksum mismatch (when `verify`).
    """
    vid, win, fp = row["video_id"], int(row["window"]), row.get("model_fingerprint")
    if blob is None:
        raise CorruptBlob(vid, win, "K/V blob is missing", fp)
    nbytes = memoryview(blob).nbytes if not isinstance(blob, np.ndarray) else blob.nbytes
    if nbytes != int(row["nbytes"]):
        raise CorruptBlob(vid, win, f"blob has {nbytes} bytes, expected {row['nbytes']}", fp)
    if verify:
        got = checksum(blob)
        if got != row["checksum"]:
            raise CorruptBlob(vid, win, f"checksum {got} != stored {row['checksum']}", fp)
    try:
        return tensor_from_bytes(blob, row["dtype"], row["shape"])
    except ValueError as exc:
        raise CorruptBlob(vid, win, str(exc), fp) from exc


def memory_from_rows(
    rows: Sequence[dict],
    blobs: Sequence[_BufferLike | None],
    *,
    fingerprint: str | None = None,
    meta: dict | None = None,
    verify: bool = True,
) -> VSTMemory:
    """A `VSTMemory` from `vst_kv` rows (dicts of the metadata columns) and their blobs.

    `rows` must contain exactly one sink row (window -1) and any subset of window rows; windows are
    returned in index order.

    Raises:
        CorruptBlob: a blob fails its checks, or the rows do not form a valid memory.
    """
    if not rows:
        raise ValueError("no vst_kv rows")
    vid = rows[0]["video_id"]
    sink = None
    wins: list[tuple[WindowSpan, torch.Tensor]] = []
    for row, blob in zip(rows, blobs, strict=True):
        t = decode_blob(row, blob, verify=verify)
        if int(row["window"]) == SINK_WINDOW:
            if sink is not None:
                raise CorruptBlob(vid, SINK_WINDOW, "two sink rows", fingerprint)
            sink = t
        else:
            wins.append((span_from_row(row), t))
    if sink is None:
        raise CorruptBlob(vid, SINK_WINDOW, "sink row is missing", fingerprint)
    wins.sort(key=lambda p: p[0].index)
    try:
        return VSTMemory(
            sink=sink,
            window_kv=[t for _, t in wins],
            windows=[s for s, _ in wins],
            fingerprint=fingerprint,
            meta=dict(meta or {}),
        )
    except ValueError as exc:
        raise CorruptBlob(vid, wins[0][0].index if wins else SINK_WINDOW, str(exc), fingerprint) from exc


def memory_from_arrow(
    table: pa.Table, *, fingerprint: str | None = None, verify: bool = True
) -> VSTMemory:
    """A `VSTMemory` from `vst_kv` rows of one video and write (with the `kv` column), zero-copy.

    This is how a plain-pyarrow reader decodes rows it read itself (see docs/ARCHIVE_FORMAT.md).

    Raises:
        CorruptBlob: a blob fails its size or checksum check, or the rows are inconsistent.
    """
    meta_cols = [c for c in table.column_names if c != "kv"]
    rows = table.select(meta_cols).to_pylist()
    blobs: list[pa.Buffer | None] = []
    for chunk in table.column("kv").chunks:
        for i in range(len(chunk)):
            blobs.append(None if not chunk[i].is_valid else chunk[i].as_buffer())
    if fingerprint is None and rows:
        fingerprint = rows[0].get("model_fingerprint")
    return memory_from_rows(rows, blobs, fingerprint=fingerprint, verify=verify)


def meta_to_json(meta: dict) -> str | None:
    """`VSTMemory.meta` as JSON (None when empty); values that JSON cannot hold become strings."""
    if not meta:
        return None
    return json.dumps(meta, default=str, sort_keys=True)
