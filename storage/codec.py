"""`VSTMemory` <-> Arrow: K/V bytes per row, raw (bit-exact) or quantized (`storage.kvcodec`).

pyarrow, numpy, torch (and xxhash for checksums) only: this module works without lancedb, so a
memory written by the archive can be read back with plain pyarrow (docs/ARCHIVE_FORMAT.md).

One `vst_kv` row per window plus one row for the sink (`window = -1`, kind `sink`). With the `raw`
codec (the default) each row's `kv` holds the bytes of a C-contiguous tensor of shape
`(L, 2, Hkv, T, D)` in the memory's dtype, exactly as `tensor.view(torch.uint8)` lays them out on a
little-endian host (bf16 is kept as its 16 raw bits; nothing is converted), and decoding is
zero-copy: tensors are views over the buffers they were read from. With `int8`/`int4`, window rows
hold `VXKV` blobs (`storage.kvcodec`) and decoding dequantizes to the memory's dtype, on the device
asked for; the sink row stays raw. `kv_codec` names each row's codec, `nbytes` is the length of
`kv`, and `checksum` is `"xxh3_128:" + hex digest` of `kv` as stored (the encoded bytes).
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
from storage import kvcodec
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
    kv_codec: str | kvcodec.KVCodec | None = None,
) -> pa.Table:
    """The `vst_kv` rows of `memory`: sink first (window -1), then one row per window, time order.

    Args:
        memory: the memory to store (any device; quantized there, then copied to the CPU).
        video_id, fingerprint, write_id: the row keys.
        window_embeddings: optional float32 `(num_windows, E)` per-window CLIP embeddings.
        written_at: time of the write (UTC, default now); `compact` uses it to age garbage.
        kv_codec: `storage.kvcodec` codec name (None: `raw`). The sink row is stored raw; a window
            whose values are not finite or beyond +-`kvcodec.FP16_LIMIT` is stored raw too (its
            row's `kv_codec` says so).

    Returns:
        A table with schema `storage.schema.VST_KV_SCHEMA`; `kv` holds the encoded bytes (one copy).

    Raises:
        ValueError: unsupported dtype or codec, fingerprint disagreeing with `memory.fingerprint`,
            or embeddings of the wrong shape.
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
    codec = kvcodec.get_codec(kv_codec)
    tensors = [memory.sink, *memory.window_kv]
    names: list[str] = []
    raw: list[np.ndarray] = []
    for k, t in enumerate(tensors):
        if codec.is_raw or (k == 0 and codec.sink_raw) or not kvcodec.quantizable(t):
            names.append(kvcodec.RAW.name)
            raw.append(tensor_bytes(t))
        else:
            names.append(codec.name)
            raw.append(kvcodec.encode_tensor(t, codec))
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
        "kv_codec": names,
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


def row_codec(row: dict) -> str:
    """The codec name of a `vst_kv` row (null, from a format 1-2 row, is `raw`)."""
    return row.get("kv_codec") or kvcodec.RAW.name


def raw_nbytes(row: dict) -> int:
    """Bytes of the row's tensor in its dtype (what `raw` stores), from `shape` and `dtype`."""
    return math.prod(int(s) for s in row["shape"]) * _ITEMSIZE[DTYPES[row["dtype"]]]


def check_row(row: dict) -> None:
    """Check a `vst_kv` row's metadata before its blob is read: known codec and dtype, a
    `(L, 2, Hkv, T, D)` shape with `T = num_tokens`, and `nbytes` possible for that shape and codec
    (exactly the raw size for `raw`; at most header + 5 bytes per value for a quantized codec).
    A corrupted size or shape is refused here, before any buffer is allocated from it.

    Raises:
        CorruptBlob: naming the video and window.
    """
    vid, win, fp = row["video_id"], int(row["window"]), row.get("model_fingerprint")
    shape = row.get("shape")
    name = row_codec(row)
    if row.get("dtype") not in DTYPES:
        raise CorruptBlob(vid, win, f"unknown K/V dtype {row.get('dtype')!r}", fp)
    if name not in kvcodec.KV_CODECS:
        raise CorruptBlob(vid, win, f"unknown K/V codec {name!r} (this vxl knows {sorted(kvcodec.KV_CODECS)})", fp)
    if (shape is None or len(shape) != 5 or int(shape[1]) != 2 or any(int(s) < 0 for s in shape)
            or int(shape[3]) != int(row["num_tokens"])):
        raise CorruptBlob(vid, win, f"bad shape {shape} for {row['num_tokens']} tokens", fp)
    nbytes, rawn = int(row["nbytes"]), raw_nbytes(row)
    if name == kvcodec.RAW.name:
        ok = nbytes == rawn
    else:
        ok = kvcodec.HEADER_BYTES <= nbytes <= kvcodec.HEADER_BYTES + 5 * math.prod(int(s) for s in shape) + 1024
    if not ok:
        raise CorruptBlob(vid, win, f"row says {nbytes} blob bytes, impossible for a {name} blob of shape "
                          f"{list(shape)} {row['dtype']} ({rawn} raw bytes)", fp)


def check_blob(row: dict, blob: _BufferLike | None) -> None:
    """What `decode_blob` checks, without decoding: presence, size, checksum of the stored bytes,
    and for a quantized row the `VXKV` header against the row (`vxl archive verify`).

    Raises:
        CorruptBlob: naming the video and window.
    """
    vid, win, fp = row["video_id"], int(row["window"]), row.get("model_fingerprint")
    check_row(row)
    if blob is None:
        raise CorruptBlob(vid, win, "K/V blob is missing", fp)
    nbytes = memoryview(blob).nbytes if not isinstance(blob, np.ndarray) else blob.nbytes
    if nbytes != int(row["nbytes"]):
        raise CorruptBlob(vid, win, f"blob has {nbytes} bytes, expected {row['nbytes']}", fp)
    got = checksum(blob)
    if got != row["checksum"]:
        raise CorruptBlob(vid, win, f"checksum {got} != stored {row['checksum']}", fp)
    if row_codec(row) != kvcodec.RAW.name:
        try:
            hdr = kvcodec.read_header(blob, shape=row["shape"], dtype=DTYPES[row["dtype"]])
        except kvcodec.CodecError as exc:
            raise CorruptBlob(vid, win, f"{row_codec(row)} blob: {exc}", fp) from exc
        if hdr.bits != kvcodec.KV_CODECS[row_codec(row)].bits:
            raise CorruptBlob(vid, win, f"{row_codec(row)} row holds a {hdr.bits}-bit blob", fp)


def decode_blob(
    row: dict, blob: _BufferLike | None, *, verify: bool = True, device: torch.device | str | None = None
) -> torch.Tensor:
    """Tensor of one `vst_kv` row from its metadata `row` and its `kv` bytes, in the row's dtype.

    A raw row on the CPU is a zero-copy view of `blob`; a quantized row is dequantized on `device`
    (default CPU), where its codes are copied first.

    Raises:
        CorruptBlob: missing blob, wrong size, checksum mismatch (when `verify`), or a quantized
            blob whose header disagrees with the row.
    """
    vid, win, fp = row["video_id"], int(row["window"]), row.get("model_fingerprint")
    check_row(row)
    if blob is None:
        raise CorruptBlob(vid, win, "K/V blob is missing", fp)
    nbytes = memoryview(blob).nbytes if not isinstance(blob, np.ndarray) else blob.nbytes
    if nbytes != int(row["nbytes"]):
        raise CorruptBlob(vid, win, f"blob has {nbytes} bytes, expected {row['nbytes']}", fp)
    if verify:
        got = checksum(blob)
        if got != row["checksum"]:
            raise CorruptBlob(vid, win, f"checksum {got} != stored {row['checksum']}", fp)
    name = row_codec(row)
    if name != kvcodec.RAW.name:
        try:
            return kvcodec.decode_tensor(blob, shape=row["shape"], dtype=DTYPES[row["dtype"]], device=device,
                                         bits=kvcodec.KV_CODECS[name].bits)
        except kvcodec.CodecError as exc:
            raise CorruptBlob(vid, win, f"{name} blob: {exc}", fp) from exc
    try:
        t = tensor_from_bytes(blob, row["dtype"], row["shape"])
    except ValueError as exc:
        raise CorruptBlob(vid, win, str(exc), fp) from exc
    return t if device is None or torch.device(device).type == "cpu" else t.to(device)


def memory_from_rows(
    rows: Sequence[dict],
    blobs: Sequence[_BufferLike | None],
    *,
    fingerprint: str | None = None,
    meta: dict | None = None,
    verify: bool = True,
    device: torch.device | str | None = None,
) -> VSTMemory:
    """A `VSTMemory` from `vst_kv` rows (dicts of the metadata columns) and their blobs.

    `rows` must contain exactly one sink row (window -1) and any subset of window rows; windows are
    returned in index order, on `device` (default CPU; quantized rows are dequantized there).

    Raises:
        CorruptBlob: a blob fails its checks, or the rows do not form a valid memory.
    """
    if not rows:
        raise ValueError("no vst_kv rows")
    vid = rows[0]["video_id"]
    sink = None
    wins: list[tuple[WindowSpan, torch.Tensor]] = []
    for row, blob in zip(rows, blobs, strict=True):
        t = decode_blob(row, blob, verify=verify, device=device)
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
    table: pa.Table, *, fingerprint: str | None = None, verify: bool = True,
    device: torch.device | str | None = None,
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
    return memory_from_rows(rows, blobs, fingerprint=fingerprint, verify=verify, device=device)


#: `VSTMemory.meta` keys that `Archive.load_memory` adds (how the memory was stored); not stored.
STORAGE_META_KEYS = ("kv_codec",)


def meta_to_json(meta: dict) -> str | None:
    """`VSTMemory.meta` as JSON (None when empty; the `STORAGE_META_KEYS` that a load added are
    dropped); values that JSON cannot hold become strings."""
    meta = {k: v for k, v in (meta or {}).items() if k not in STORAGE_META_KEYS}
    if not meta:
        return None
    return json.dumps(meta, default=str, sort_keys=True)
