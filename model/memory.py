"""`VSTMemory`: the compressed, position-free memory of one video.

Shape legend (used across `model/`):
    F frames, P patches per frame (576), N visual tokens per frame (144), T tokens,
    L decoder layers, Hkv key/value heads, D head dim, S sink tokens.

A memory holds, for every decoder layer, the **pre-RoPE** keys and the values of
(1) the sink, the prompt prefix before `<image>` (14 tokens with Video-XL's template), and
(2) the Visual Summarization Tokens (VSTs) kept after each window (VIDEO_XL.md section 2).
Keys are stored before rotary embedding, so any subset of windows, concatenated in time order
after the sink, is again a valid memory: RoPE is applied afresh with positions
`0 .. num_tokens - 1` when the memory is read (Video-XL's own behaviour, confirmed by the oracle).

Nothing here is stored on a module: a memory is passed to `VideoXL.answer` and returned by
`VideoXL.encode`, and it can be converted to bytes and back (see `storage.codec`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import torch


@dataclass(frozen=True)
class WindowSpan:
    """What one stored window of VSTs summarises.

    Attributes:
        index: window number within the video's plan (0-based; kept when a subset is selected).
        frame_start: first sampled frame of the window (index into the sampled frames).
        frame_end: one past the last sampled frame (exclusive).
        ratio: compression ratio r: one VST per r visual tokens.
        num_vst: VSTs kept for this window, `(visual_tokens + carry_in) // ratio`.
        carry_in: visual tokens carried from the previous window (remainder of its division).
        start_s: presentation time of the first frame, in seconds (None when unknown).
        end_s: presentation time of the last frame, in seconds (None when unknown).
    """

    index: int
    frame_start: int
    frame_end: int
    ratio: int
    num_vst: int
    carry_in: int = 0
    start_s: float | None = None
    end_s: float | None = None

    @property
    def num_frames(self) -> int:
        return self.frame_end - self.frame_start


@dataclass
class VSTMemory:
    """Sink K/V plus per-window VST K/V, pre-RoPE.

    Attributes:
        sink: `(L, 2, Hkv, S, D)` tensor, index 0 of dim 1 = keys (pre-RoPE), 1 = values.
        window_kv: one `(L, 2, Hkv, T_w, D)` tensor per window, `T_w = windows[i].num_vst`.
        windows: one `WindowSpan` per entry of `window_kv`, in time order.
        fingerprint: digest of the model that produced the memory (`VideoXL.fingerprint`), or None.

    All tensors share one dtype and device. `num_tokens` is what a question attends to:
    `S + sum(T_w)`.
    """

    sink: torch.Tensor
    window_kv: list[torch.Tensor]
    windows: list[WindowSpan]
    fingerprint: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sink.dim() != 5 or self.sink.shape[1] != 2:
            raise ValueError(f"sink must be (L, 2, Hkv, S, D), got {tuple(self.sink.shape)}")
        if len(self.window_kv) != len(self.windows):
            raise ValueError(f"{len(self.window_kv)} K/V tensors for {len(self.windows)} windows")
        L, _, H, _, D = self.sink.shape
        for w, kv in zip(self.windows, self.window_kv, strict=True):
            if kv.dtype != self.sink.dtype:
                raise ValueError(f"window {w.index}: dtype {kv.dtype} != sink dtype {self.sink.dtype}")
            if kv.shape != (L, 2, H, w.num_vst, D):
                raise ValueError(
                    f"window {w.index}: K/V shape {tuple(kv.shape)} != {(L, 2, H, w.num_vst, D)}"
                )

    # -- geometry -----------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.sink.dtype

    @property
    def device(self) -> torch.device:
        return self.sink.device

    @property
    def num_layers(self) -> int:
        return self.sink.shape[0]

    @property
    def num_kv_heads(self) -> int:
        return self.sink.shape[2]

    @property
    def head_dim(self) -> int:
        return self.sink.shape[4]

    @property
    def sink_tokens(self) -> int:
        return self.sink.shape[3]

    @property
    def num_vst(self) -> int:
        """VST tokens over all windows."""
        return sum(w.num_vst for w in self.windows)

    @property
    def num_tokens(self) -> int:
        """Tokens a question attends to: sink + all VSTs."""
        return self.sink_tokens + self.num_vst

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V per kept token over all layers (56 KiB for Video-XL-7B in bf16)."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * self.sink.element_size()

    @property
    def nbytes(self) -> int:
        """Bytes of K/V held (sink + windows)."""
        return self.num_tokens * self.kv_bytes_per_token

    # -- views --------------------------------------------------------------------------------
    def kv(self) -> torch.Tensor:
        """Sink and windows concatenated in time order: `(L, 2, Hkv, num_tokens, D)`, pre-RoPE."""
        return torch.cat([self.sink, *self.window_kv], dim=3)  # (L, 2, Hkv, T, D)

    def select(self, indices: Iterable[int]) -> VSTMemory:
        """A memory with only the windows whose `WindowSpan.index` is in `indices`, in time order.

        Raises:
            KeyError: an index that is not among this memory's windows.
        """
        wanted = sorted(set(int(i) for i in indices))
        pos = {w.index: k for k, w in enumerate(self.windows)}
        missing = [i for i in wanted if i not in pos]
        if missing:
            raise KeyError(f"windows {missing} not in memory (has {sorted(pos)})")
        keep = [pos[i] for i in wanted]
        return replace(
            self,
            window_kv=[self.window_kv[k] for k in keep],
            windows=[self.windows[k] for k in keep],
            meta=dict(self.meta),
        )

    def windows_in_time_range(self, start_s: float, end_s: float) -> list[int]:
        """Indices of windows overlapping `[start_s, end_s]` seconds.

        Raises:
            ValueError: a window without timestamps.
        """
        out = []
        for w in self.windows:
            if w.start_s is None or w.end_s is None:
                raise ValueError(f"window {w.index} has no timestamps")
            if w.end_s >= start_s and w.start_s <= end_s:
                out.append(w.index)
        return out

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> VSTMemory:
        return replace(
            self,
            sink=self.sink.to(device=device, dtype=dtype),
            window_kv=[kv.to(device=device, dtype=dtype) for kv in self.window_kv],
            meta=dict(self.meta),
        )

    def equal(self, other: VSTMemory) -> bool:
        """Bit-for-bit equality of every tensor and of the window metadata."""
        return (
            self.windows == other.windows
            and self.dtype == other.dtype
            and _bits_equal(self.sink, other.sink)
            and len(self.window_kv) == len(other.window_kv)
            and all(_bits_equal(a, b) for a, b in zip(self.window_kv, other.window_kv, strict=True))
        )


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a8 = a.detach().cpu().contiguous().view(torch.uint8)
    b8 = b.detach().cpu().contiguous().view(torch.uint8)
    return torch.equal(a8, b8)

