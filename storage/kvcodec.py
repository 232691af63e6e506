"""K/V codecs of the archive: how a `vst_kv` row's `(L, 2, Hkv, T, D)` tensor becomes its `kv` bytes.

torch, numpy and pyarrow only (no lancedb): a plain-pyarrow reader decodes with this module.

Registry (`KV_CODECS`, the `vst_kv.kv_codec` / `videos.kv_codec` column names them):

| name | what `kv` holds |
|---|---|
| `raw` (default) | the tensor's little-endian bytes, bit-exact (`storage.codec.tensor_bytes`) |
| `int8` | a `VXKV` blob: 8-bit codes + float16 scales and minima per group |
| `int4` | a `VXKV` blob: 4-bit codes (two per byte) + float16 scales and minima per group |
| `int8-zstd`, `int4-zstd` | the same, with the payload compressed by zstd (pyarrow's, level 3): lossless, smaller when the codes are skewed, slower to load |

Quantization is asymmetric (min/max) per group, as in KIVI: for a group of values with minimum
`lo` and maximum `hi`, `min` = `lo` rounded down to float16, `scale` = `(hi - min) / (2^bits - 1)`
rounded up to float16, `code = round((x - min) / scale)` clamped to `[0, 2^bits - 1]`, and decoding
gives `min + code * scale` (float32, then cast to the memory's dtype). Directed rounding of the
float16 parameters keeps every value inside the group's range, so **per group, |x - decoded| <=
scale / 2** (up to float32 rounding of the decoding arithmetic, and the cast to bf16/fp16 on top).

Grouping (chosen by measurement, docs/PERFORMANCE.md "KV codecs"): keys and values per channel
(one scale and minimum per layer, head and channel over a group of 128 consecutive tokens of a
row; keys are quantized pre-RoPE, as stored). The alternative, per token (one scale per token and
head over a group of channels), is supported by the format (`KVCodec.key_axis`/`value_axis`) and
measured, not registered. A group axis of
length T is cut into `n = max(1, floor(T / G + 1/2))` groups: `n - 1` groups of G and a last one
of the remaining `T - (n - 1) G` (between G/2 and 3G/2 when T >= G/2), so a window of 148 tokens
is one group at G = 128 instead of 128 + 20.

The sink row (window -1, the 14-token prompt prefix every question attends to first) is always
stored `raw` (`encode_row(..., sink=True)`): it is a few hundred KiB per memory, and attention
sinks are where small errors cost most (measured, docs/PERFORMANCE.md).

Blob layout (`VXKV` layout 1; little-endian; 64-byte header, then the payload):

| offset | size | field |
|---|---|---|
| 0 | 4 | magic `b"VXKV"` |
| 4 | 1 | layout version (1) |
| 5 | 1 | bits (4 or 8) |
| 6 | 1 | key axis (0 = per channel: groups along tokens; 1 = per token: groups along channels) |
| 7 | 1 | value axis (same coding) |
| 8 | 2 | key group size G_k |
| 10 | 2 | value group size G_v |
| 12 | 1 | dtype of the memory (0 float32, 1 float16, 2 bfloat16) |
| 13 | 1 | entropy stage (0 none; 1 zstd over the payload, through pyarrow) |
| 14 | 2 | reserved (0) |
| 16 | 20 | shape `L, 2, Hkv, T, D` (5 x uint32) |
| 36 | 8 | payload bytes (uint64, before the entropy stage) |
| 44 | 8 | payload bytes as stored (uint64) |
| 52 | 12 | reserved (0) |

Payload: `key_min`, `key_scale`, `value_min`, `value_scale` (float16; shape `(L, Hkv, n_groups, D)`
for per-channel, `(L, Hkv, T, n_groups)` for per-token), then `key_codes`, `value_codes` (uint8,
codes of the `(L, Hkv, T, D)` tensor in C order; 4-bit codes two per byte, planar: of n codes,
byte i holds code i in its low nibble and code i + ceil(n/2) in its high nibble, the last high
nibble 0 when n is odd). Every size follows from the header, and the header must agree with the row's `shape` and
`dtype`: a blob whose sizes disagree is `CorruptBlob` before anything is allocated from it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

MAGIC = b"VXKV"
LAYOUT_VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<4sBBBBHHBBH5IQQ")  # 52 bytes, zero-padded to HEADER_BYTES
_AXES = ("channel", "token")
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_DTYPES_BY_CODE = {v: k for k, v in _DTYPE_CODES.items()}
_ENTROPY = (None, "zstd")
ZSTD_LEVEL = 3
CPU_CHUNK_VALUES = 1 << 18
"""values dequantized per step on the CPU (a 1 MiB float32 scratch buffer, cache-resident)."""
FP16_LIMIT = 60000.0
"""values beyond +-this (or not finite) cannot be described by float16 minima and scales: such a
row is stored `raw` (its `kv_codec` says so)."""


class CodecError(ValueError):
    """A blob that does not decode (wrong magic, sizes that disagree with the row, bad codes)."""


@dataclass(frozen=True)
class KVCodec:
    """One K/V codec.

    Attributes:
        name: registry name (what `kv_codec` columns hold).
        bits: code width (4 or 8); None for `raw`.
        key_axis: "channel" (a scale per channel over `key_group` tokens) or "token" (a scale per
            token over `key_group` channels).
        value_axis: the same for values.
        key_group, value_group: group sizes (tokens for per-channel, channels for per-token; a
            per-token group is at most the head dim).
        entropy: None, or "zstd": a lossless stage over the quantized payload.
        sink_raw: store the sink row raw (True for every registered codec).
    """

    name: str
    bits: int | None = None
    key_axis: str = "channel"
    value_axis: str = "channel"
    key_group: int = 128
    value_group: int = 128
    entropy: str | None = None
    sink_raw: bool = True

    def __post_init__(self) -> None:
        if self.bits not in (None, 4, 8):
            raise ValueError(f"codec {self.name}: bits must be 4 or 8, got {self.bits}")
        if self.key_axis not in _AXES or self.value_axis not in _AXES:
            raise ValueError(f"codec {self.name}: axes must be in {_AXES}")
        if not (1 <= self.key_group <= 65535 and 1 <= self.value_group <= 65535):
            raise ValueError(f"codec {self.name}: group sizes must be in 1..65535")
        if self.entropy not in _ENTROPY:
            raise ValueError(f"codec {self.name}: entropy must be one of {_ENTROPY}")

    @property
    def is_raw(self) -> bool:
        return self.bits is None


RAW = KVCodec("raw")
KV_CODECS: dict[str, KVCodec] = {
    "raw": RAW,
    "int8": KVCodec("int8", bits=8, key_axis="channel", value_axis="channel", key_group=128, value_group=128),
    "int4": KVCodec("int4", bits=4, key_axis="channel", value_axis="channel", key_group=128, value_group=128),
    "int8-zstd": KVCodec("int8-zstd", bits=8, key_axis="channel", value_axis="channel", key_group=128,
                         value_group=128, entropy="zstd"),
    "int4-zstd": KVCodec("int4-zstd", bits=4, key_axis="channel", value_axis="channel", key_group=128,
                         value_group=128, entropy="zstd"),
}
DEFAULT_CODEC = "raw"


def get_codec(name: str | KVCodec | None) -> KVCodec:
    """The codec named `name` (None: `raw`); a `KVCodec` is returned as is.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if isinstance(name, KVCodec):
        return name
    if name is None:
        return RAW
    try:
        return KV_CODECS[name]
    except KeyError:
        raise ValueError(f"unknown K/V codec {name!r}; use one of {sorted(KV_CODECS)}") from None


def n_groups(length: int, group: int) -> int:
    """Groups along an axis of `length`: `max(1, floor(length / group + 1/2))` (0 for an empty axis)."""
    if length <= 0:
        return 0
    return max(1, (2 * length + group) // (2 * group))


def _axis_groups(axis: str, group: int, T: int, D: int) -> tuple[int, int, int]:
    """(group axis in (L, Hkv, T, D): 2 or 3, its effective group size, number of groups)."""
    if axis == "channel":
        return 2, group, n_groups(T, group)
    g = min(group, D)
    return 3, g, n_groups(D, g)


def _param_count(axis: str, group: int, L: int, H: int, T: int, D: int) -> int:
    ax, _, n = _axis_groups(axis, group, T, D)
    return L * H * (n * D if ax == 2 else T * n)


def _code_bytes(bits: int, count: int) -> int:
    return count if bits == 8 else (count + 1) // 2


def payload_nbytes(codec: KVCodec, shape: Sequence[int]) -> int:
    """Bytes of the quantized payload of a `shape` = (L, 2, Hkv, T, D) tensor (before any entropy stage)."""
    L, _, H, T, D = (int(s) for s in shape)
    params = _param_count(codec.key_axis, codec.key_group, L, H, T, D) + _param_count(
        codec.value_axis, codec.value_group, L, H, T, D)
    return 2 * 2 * params + 2 * _code_bytes(codec.bits, L * H * T * D)


def encoded_nbytes(codec: KVCodec, shape: Sequence[int], dtype: torch.dtype) -> int | None:
    """Exact size of the `kv` bytes of a row of `shape` and `dtype` under `codec` (None: not known
    in advance, i.e. an entropy stage)."""
    if codec.is_raw:
        return math.prod(int(s) for s in shape) * torch.empty((), dtype=dtype).element_size()
    if codec.entropy is not None:
        return None
    return HEADER_BYTES + payload_nbytes(codec, shape)


# -- rounding of the float16 parameters ----------------------------------------------------------
def _f16_down(x: torch.Tensor) -> torch.Tensor:
    """float16 values <= x (float32 in, float16 out), the nearest such."""
    h = x.to(torch.float16)
    low = h.float() > x
    if bool(low.any()):
        h = torch.where(low, torch.nextafter(h, torch.full_like(h, -math.inf)), h)
    return h


def _f16_up(x: torch.Tensor) -> torch.Tensor:
    h = x.to(torch.float16)
    high = h.float() < x
    if bool(high.any()):
        h = torch.where(high, torch.nextafter(h, torch.full_like(h, math.inf)), h)
    return h


# -- grouped reductions and broadcasts along one axis of a (L, H, T, D) tensor ------------------------
def _pieces(x: torch.Tensor, ax: int, g: int, n: int) -> list[torch.Tensor]:
    """Views of `x` along axis `ax`: the n - 1 regular groups unflattened to (..., n-1, g, ...) and
    the last group as (..., 1, rest, ...)."""
    length = x.shape[ax]
    cut = (n - 1) * g
    out = []
    if n > 1:
        out.append(x.narrow(ax, 0, cut).unflatten(ax, (n - 1, g)))
    out.append(x.narrow(ax, cut, length - cut).unsqueeze(ax))
    return out


def _param_pieces(p: torch.Tensor, ax: int, n: int) -> list[torch.Tensor]:
    """Parameters `(…, n, …)` at `ax` split as `_pieces` splits the data, broadcastable to it."""
    out = []
    if n > 1:
        out.append(p.narrow(ax, 0, n - 1).unsqueeze(ax + 1))
    out.append(p.narrow(ax, n - 1, 1).unsqueeze(ax + 1))
    return out


def _quantize_part(x: torch.Tensor, axis: str, group: int, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 `(L, H, T, D)` -> (min float16, scale float16, codes uint8 `(L, H, T, D)`)."""
    L, H, T, D = x.shape
    ax, g, n = _axis_groups(axis, group, T, D)
    if n == 0 or x.numel() == 0:
        pshape = (L, H, 0, D) if ax == 2 else (L, H, T, 0)
        empty = torch.empty(pshape, dtype=torch.float16, device=x.device)
        return empty, empty.clone(), torch.empty((L, H, T, D), dtype=torch.uint8, device=x.device)
    levels = (1 << bits) - 1
    lo = torch.cat([p.amin(dim=ax + 1) for p in _pieces(x, ax, g, n)], dim=ax)  # (…, n, …)
    hi = torch.cat([p.amax(dim=ax + 1) for p in _pieces(x, ax, g, n)], dim=ax)
    mn = _f16_down(lo)
    mn32 = mn.float()
    sc = _f16_up((hi - mn32) / levels)
    sc32 = sc.float()
    short = mn32 + sc32 * levels < hi  # float32 arithmetic of the decoder must reach hi
    while bool(short.any()):
        sc = torch.where(short, torch.nextafter(sc, torch.full_like(sc, math.inf)), sc)
        sc32 = sc.float()
        short = mn32 + sc32 * levels < hi
    inv = torch.where(sc32 > 0, 1.0 / torch.where(sc32 > 0, sc32, 1.0), 0.0)
    codes = torch.empty((L, H, T, D), dtype=torch.uint8, device=x.device)
    for xp, cp, mp, ip in zip(_pieces(x, ax, g, n), _pieces(codes, ax, g, n), _param_pieces(mn32, ax, n),
                              _param_pieces(inv, ax, n), strict=True):
        q = torch.round((xp - mp) * ip).clamp_(0, levels)
        cp.copy_(q)
    return mn, sc, codes


def _dequantize_part(codes: torch.Tensor, mn: torch.Tensor, sc: torch.Tensor, axis: str, group: int,
                     out: torch.Tensor) -> None:
    """Write `min + code * scale` of the codes `(L, H, T, D)` (uint8, or float32 to be overwritten)
    into `out` (any float dtype, same shape)."""
    L, H, T, D = codes.shape
    ax, g, n = _axis_groups(axis, group, T, D)
    if n == 0 or codes.numel() == 0:
        return
    y = codes if codes.dtype == torch.float32 else codes.to(torch.float32)  # vectorised cast
    mn32, sc32 = mn.float(), sc.float()
    for yp, op, mp, sp in zip(_pieces(y, ax, g, n), _pieces(out, ax, g, n), _param_pieces(mn32, ax, n),
                              _param_pieces(sc32, ax, n), strict=True):
        if out.dtype == torch.float32:
            torch.addcmul(mp, yp, sp, out=op)
        else:  # float32 arithmetic in place, then one cast (faster than an addcmul writing bf16, same bits)
            torch.addcmul(mp, yp, sp, out=yp)
    if out.dtype != torch.float32:
        out.copy_(y)


def _pack4(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes, planar: byte i holds code i (low nibble) and code i + ceil(n/2) (high nibble),
    so unpacking is two contiguous passes (faster than interleaved nibbles on the CPU)."""
    flat = codes.reshape(-1)
    half = (flat.numel() + 1) // 2
    hi = flat[half:]
    if hi.numel() < half:
        hi = torch.cat([hi, hi.new_zeros(half - hi.numel())])
    return flat[:half] | (hi << 4)


def _codes_into(raw: torch.Tensor, bits: int, count: int, a: int, b: int, out: torch.Tensor) -> None:
    """Write codes `a .. b-1` (of `count`) of a part's code bytes `raw` into the flat float32 `out`.

    8-bit: bytes a..b-1. 4-bit, planar (`_pack4`): code k is the low nibble of byte k when
    k < ceil(count / 2), else the high nibble of byte k - ceil(count / 2).
    """
    if bits == 8:
        out.copy_(raw[a:b])
        return
    half = (count + 1) // 2
    if a < half:
        m = min(b, half)
        out[: m - a].copy_(raw[a:m] & 0x0F)
        a, out = m, out[m - a :]
    if a < b:
        out.copy_(raw[a - half : b - half] >> 4)


def _ensure_fp16_range(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all()) and (x.numel() == 0 or float(x.abs().max()) <= FP16_LIMIT)


def quantizable(t: torch.Tensor) -> bool:
    """True when every value of `t` is finite and within +-`FP16_LIMIT` (else the row is stored raw)."""
    return _ensure_fp16_range(t.detach())


def encode_tensor(t: torch.Tensor, codec: KVCodec) -> np.ndarray:
    """`VXKV` blob (uint8 numpy array) of `t` `(L, 2, Hkv, T, D)` under a quantizing `codec`.

    Runs on `t`'s device (the GPU at index time), then copies the (small) result to the CPU.

    Raises:
        ValueError: `codec` is raw, the shape is not 5-D with dim 1 = 2, an unsupported dtype, or
            values that are not finite / beyond +-FP16_LIMIT (check `quantizable` first).
    """
    if codec.is_raw:
        raise ValueError("encode_tensor is for quantizing codecs; raw rows are stored as tensor bytes")
    if t.dim() != 5 or t.shape[1] != 2:
        raise ValueError(f"K/V tensor must be (L, 2, Hkv, T, D), got {tuple(t.shape)}")
    if t.dtype not in _DTYPE_CODES:
        raise ValueError(f"unsupported K/V dtype {t.dtype}")
    if any(s >= 2**32 for s in t.shape):
        raise ValueError(f"shape {tuple(t.shape)} too large for the VXKV header")
    x = t.detach().float()
    if not _ensure_fp16_range(x):
        raise ValueError(f"values not finite or beyond +-{FP16_LIMIT}: store this tensor raw")
    parts = []
    codes = []
    for i, (axis, group) in enumerate(((codec.key_axis, codec.key_group), (codec.value_axis, codec.value_group))):
        mn, sc, q = _quantize_part(x[:, i], axis, group, codec.bits)
        parts += [mn.reshape(-1), sc.reshape(-1)]
        codes.append(q if codec.bits == 8 else _pack4(q))
    params = torch.cat(parts).view(torch.uint8)
    payload = torch.cat([params, *(c.reshape(-1) for c in codes)]).cpu().numpy()  # (payload_bytes,)
    nbytes = payload.nbytes
    assert nbytes == payload_nbytes(codec, t.shape), (nbytes, payload_nbytes(codec, t.shape))
    if codec.entropy == "zstd":
        import pyarrow as pa

        payload = np.frombuffer(pa.Codec("zstd", compression_level=ZSTD_LEVEL).compress(payload, asbytes=True),
                                dtype=np.uint8)
    header = _HEADER.pack(MAGIC, LAYOUT_VERSION, codec.bits, _AXES.index(codec.key_axis),
                          _AXES.index(codec.value_axis), codec.key_group, codec.value_group,
                          _DTYPE_CODES[t.dtype], _ENTROPY.index(codec.entropy), 0, *(int(s) for s in t.shape),
                          nbytes, payload.nbytes)
    out = np.zeros(HEADER_BYTES + payload.nbytes, dtype=np.uint8)
    out[: len(header)] = np.frombuffer(header, dtype=np.uint8)
    out[HEADER_BYTES:] = payload
    return out


@dataclass(frozen=True)
class BlobHeader:
    bits: int
    key_axis: str
    value_axis: str
    key_group: int
    value_group: int
    dtype: torch.dtype
    entropy: str | None
    shape: tuple[int, int, int, int, int]
    payload_nbytes: int
    stored_nbytes: int

    def codec(self, name: str = "?") -> KVCodec:
        return KVCodec(name, self.bits, self.key_axis, self.value_axis, self.key_group, self.value_group,
                       self.entropy)


def read_header(blob, *, shape: Sequence[int] | None = None, dtype: torch.dtype | None = None) -> BlobHeader:
    """Parse and check a `VXKV` header: magic, version, field values, and sizes against the blob's
    length and (when given) the row's `shape` and `dtype`. Allocates nothing.

    Raises:
        CodecError: anything that does not agree.
    """
    view = memoryview(blob).cast("B") if not isinstance(blob, np.ndarray) else memoryview(blob.reshape(-1))
    if view.nbytes < HEADER_BYTES:
        raise CodecError(f"quantized blob has {view.nbytes} bytes, shorter than its {HEADER_BYTES}-byte header")
    f = _HEADER.unpack_from(view, 0)
    magic, ver, bits, kax, vax, kg, vg, dcode, ent, _res, *rest = f
    shp, payload, stored = tuple(rest[:5]), rest[5], rest[6]
    if magic != MAGIC:
        raise CodecError(f"quantized blob starts with {bytes(magic)!r}, not {MAGIC!r}")
    if ver != LAYOUT_VERSION:
        raise CodecError(f"quantized blob layout {ver}, this vxl reads layout {LAYOUT_VERSION}")
    if bits not in (4, 8) or kax > 1 or vax > 1 or not kg or not vg or dcode not in _DTYPES_BY_CODE \
            or ent >= len(_ENTROPY) or shp[1] != 2:
        raise CodecError(f"quantized blob header has invalid fields {f[1:10]} / shape {shp}")
    hdr = BlobHeader(bits, _AXES[kax], _AXES[vax], kg, vg, _DTYPES_BY_CODE[dcode], _ENTROPY[ent], shp, payload,
                     stored)
    if shape is not None and tuple(int(s) for s in shape) != shp:
        raise CodecError(f"quantized blob is for shape {list(shp)}, the row says {list(shape)}")
    if dtype is not None and dtype != hdr.dtype:
        raise CodecError(f"quantized blob is for {hdr.dtype}, the row says {dtype}")
    want = payload_nbytes(hdr.codec(), shp)
    if payload != want:
        raise CodecError(f"quantized blob says {payload} payload bytes, its shape needs {want}")
    if view.nbytes != HEADER_BYTES + stored or (hdr.entropy is None and stored != payload):
        raise CodecError(f"quantized blob has {view.nbytes} bytes, its header says {HEADER_BYTES + stored}")
    return hdr


def decode_tensor(blob, *, shape: Sequence[int] | None = None, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None, out_dtype: torch.dtype | None = None,
                  bits: int | None = None) -> torch.Tensor:
    """Dequantize a `VXKV` blob to a `(L, 2, Hkv, T, D)` tensor of `out_dtype` (default: the
    stored dtype) on `device` (default CPU). The codes and parameters are moved to `device` first
    (a quarter of the raw bytes for int4), and the arithmetic runs there, vectorised.

    Raises:
        CodecError: the header disagrees with `shape`/`dtype`/`bits` or with the blob's length, or
            the entropy stage fails.
    """
    hdr = read_header(blob, shape=shape, dtype=dtype)
    if bits is not None and hdr.bits != bits:
        raise CodecError(f"blob holds {hdr.bits}-bit codes, its row's codec has {bits}")
    buf = np.frombuffer(blob, dtype=np.uint8) if not isinstance(blob, np.ndarray) else blob.reshape(-1)
    payload = buf[HEADER_BYTES:]
    if hdr.entropy == "zstd":
        import pyarrow as pa

        try:
            payload = np.frombuffer(pa.decompress(payload, decompressed_size=hdr.payload_nbytes, codec="zstd",
                                                  asbytes=True), dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise CodecError(f"zstd stage does not decode: {exc}") from exc
    L, _, H, T, D = hdr.shape
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if payload.size == 0:
        data = torch.empty(0, dtype=torch.uint8)
    elif payload.flags.writeable:
        data = torch.from_numpy(payload)
    else:  # immutable bytes: a read-only view (the warning is filtered in storage.codec)
        data = torch.frombuffer(payload, dtype=torch.uint8)
    if data.numel() and dev.type != "cpu":
        data = data.to(dev, non_blocking=False)
    out = torch.empty((L, 2, H, T, D), dtype=out_dtype or hdr.dtype, device=dev)
    codec = hdr.codec()
    counts = [_param_count(codec.key_axis, codec.key_group, L, H, T, D),
              _param_count(codec.value_axis, codec.value_group, L, H, T, D)]
    off = 0
    params = []
    for c in (counts[0], counts[0], counts[1], counts[1]):
        params.append(data[off : off + 2 * c].view(torch.float16) if c else data.new_empty(0, dtype=torch.float16))
        off += 2 * c
    n = L * H * T * D
    cbytes = _code_bytes(hdr.bits, n)
    per = H * T * D  # codes per layer
    # On the CPU, layers are decoded a few at a time through one small float32 scratch buffer that
    # stays in cache (no fresh pages per part: 1.5-2x faster than whole parts); on a GPU in one go.
    step = L if dev.type != "cpu" else max(1, min(L, CPU_CHUNK_VALUES // max(per, 1)))
    scratch = torch.empty(step * per, dtype=torch.float32, device=dev) if n else None
    for i, (axis, group) in enumerate(((codec.key_axis, codec.key_group), (codec.value_axis, codec.value_group))):
        raw = data[off : off + cbytes]
        off += cbytes
        ax, _, ng = _axis_groups(axis, group, T, D)
        pshape = (L, H, ng, D) if ax == 2 else (L, H, T, ng)
        mn, sc = params[2 * i].view(pshape), params[2 * i + 1].view(pshape)
        for l0 in range(0, L if n else 0, step):
            l1 = min(L, l0 + step)
            y = scratch[: (l1 - l0) * per]
            _codes_into(raw, hdr.bits, n, l0 * per, l1 * per, y)
            _dequantize_part(y.view(l1 - l0, H, T, D), mn[l0:l1], sc[l0:l1], axis, group, out[l0:l1, i])
    return out


def group_error_bound(blob) -> torch.Tensor:
    """`scale / 2` of every element's group (float32 `(L, 2, Hkv, T, D)`) of a `VXKV` blob: what
    `|x - decoded|` stays within, up to float32 rounding (tests, benches)."""
    hdr = read_header(blob)
    L, _, H, T, D = hdr.shape
    buf = np.frombuffer(blob, dtype=np.uint8) if not isinstance(blob, np.ndarray) else blob.reshape(-1)
    payload = buf[HEADER_BYTES:]
    if hdr.entropy == "zstd":
        import pyarrow as pa

        payload = np.frombuffer(pa.decompress(payload, decompressed_size=hdr.payload_nbytes, codec="zstd",
                                              asbytes=True), dtype=np.uint8)
    data = torch.from_numpy(payload.copy())
    codec = hdr.codec()
    out = torch.empty((L, 2, H, T, D), dtype=torch.float32)
    off = 0
    for i, (axis, group) in enumerate(((codec.key_axis, codec.key_group), (codec.value_axis, codec.value_group))):
        c = _param_count(axis, group, L, H, T, D)
        ax, g, ng = _axis_groups(axis, group, T, D)
        pshape = (L, H, ng, D) if ax == 2 else (L, H, T, ng)
        off += 4 * c
        if c:
            sc = data[off - 2 * c : off].view(torch.float16).view(pshape).float() / 2
            for op, sp in zip(_pieces(out[:, i], ax, g, ng), _param_pieces(sc, ax, ng), strict=True):
                op.copy_(sp.expand_as(op))
    return out
