"""Chunk plans: how a video's visual tokens are cut into windows, and each window's ratio.

A plan is data, computed before encoding and stored with the video. Planners are chosen by name
from `PLANNERS` (`fixed` here; `dynamic` in `model.dynamic`). Every planner is deterministic: the
same frames and parameters give the same plan, and no global random state is touched.

VST layout (Video-XL, VIDEO_XL.md section 2, confirmed by `shared/oracle/*/windows.json`): a window
of `n` visual tokens at ratio `r` with `c` tokens carried from the previous window holds
`(n + c) // r` VSTs; the j-th VST (1-based) follows the `j * r - c`-th visual token of the window,
i.e. in the extended window (visual tokens and VSTs interleaved) position `i` is a VST when
`i % (r + 1) == r - c`. The remainder `(n + c) % r` is carried to the next window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class PlannedWindow:
    """One window: sampled frames `[frame_start, frame_end)` compressed at `ratio`."""

    frame_start: int
    frame_end: int
    ratio: int

    @property
    def num_frames(self) -> int:
        return self.frame_end - self.frame_start


@dataclass(frozen=True)
class ChunkPlan:
    """Windows and ratios for one video.

    Attributes:
        windows: contiguous, in time order, covering frames `0 .. num_frames`.
        tokens_per_frame: visual tokens per frame after pooling (144 for Video-XL).
        planner: name of the planner that made the plan (`fixed`, `dynamic`).
        params: the planner's parameters (JSON-serialisable), stored with the video.
        extras: planner diagnostics (JSON-serialisable lists), e.g. the CLIP similarity curve.
    """

    windows: tuple[PlannedWindow, ...]
    tokens_per_frame: int
    planner: str = "fixed"
    params: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return self.windows[-1].frame_end if self.windows else 0

    @property
    def visual_tokens(self) -> int:
        return self.num_frames * self.tokens_per_frame

    def layout(self) -> list[tuple[int, int]]:
        """`(num_vst, carry_in)` per window, carrying the remainder across windows."""
        out, carry = [], 0
        for w in self.windows:
            n = w.num_frames * self.tokens_per_frame
            out.append(((n + carry) // w.ratio, carry))
            carry = (n + carry) % w.ratio
        return out

    @property
    def num_vst(self) -> int:
        return sum(n for n, _ in self.layout())

    def validate(self, num_frames: int, window_tokens: int | None = None) -> None:
        """Check the plan covers `num_frames` frames exactly, windows are contiguous and bounded.

        Raises:
            ValueError: naming the first window that breaks a rule.
        """
        if not self.windows:
            raise ValueError("plan has no windows")
        expect = 0
        for i, w in enumerate(self.windows):
            if w.frame_start != expect or w.frame_end <= w.frame_start:
                raise ValueError(
                    f"plan window {i} covers frames [{w.frame_start}, {w.frame_end}); expected it to start "
                    f"at frame {expect} and be non-empty"
                )
            if not isinstance(w.ratio, int) or w.ratio < 1:
                raise ValueError(f"plan window {i}: ratio must be a positive integer, got {w.ratio!r}")
            if window_tokens is not None and w.num_frames * self.tokens_per_frame > window_tokens:
                raise ValueError(
                    f"plan window {i} has {w.num_frames * self.tokens_per_frame} visual tokens, "
                    f"more than the window limit {window_tokens}"
                )
            expect = w.frame_end
        if expect != num_frames:
            raise ValueError(f"plan covers {expect} frames but the video has {num_frames} frames")

    def to_dict(self) -> dict:
        return {
            "planner": self.planner,
            "tokens_per_frame": self.tokens_per_frame,
            "windows": [[w.frame_start, w.frame_end, w.ratio] for w in self.windows],
            "params": self.params,
            "extras": self.extras,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ChunkPlan:
        return cls(
            windows=tuple(PlannedWindow(int(a), int(b), int(r)) for a, b, r in d["windows"]),
            tokens_per_frame=int(d["tokens_per_frame"]),
            planner=d.get("planner", "fixed"),
            params=dict(d.get("params", {})),
            extras=dict(d.get("extras", {})),
        )


def vst_positions(num_visual: int, ratio: int, carry_in: int) -> torch.Tensor:
    """Bool mask over the extended window (visual tokens and VSTs interleaved), True at VSTs.

    Length `num_visual + (num_visual + carry_in) // ratio`. Reproduces the original's rule
    `i % (r + 1) == r - carry` (oracle `windows.json`, `beacon_positions_in_window`); when the carry
    is not smaller than `ratio` (possible only after a window of a larger ratio), the leading VSTs
    sit at the start of the window.
    """
    n_vst = (num_visual + carry_in) // ratio
    mask = torch.zeros(num_visual + n_vst, dtype=torch.bool)
    if n_vst:
        j = torch.arange(1, n_vst + 1)
        raw_before = (j * ratio - carry_in).clamp(min=0)  # visual tokens preceding VST j
        mask[raw_before + j - 1] = True
    return mask


Planner = Callable[..., ChunkPlan]
PLANNERS: dict[str, Planner] = {}


def register_planner(name: str) -> Callable[[Planner], Planner]:
    def deco(fn: Planner) -> Planner:
        PLANNERS[name] = fn
        return fn

    return deco


@register_planner("fixed")
def plan_fixed(num_frames: int, *, tokens_per_frame: int, window_tokens: int, ratio: int = 8) -> ChunkPlan:
    """Video-XL's demo plan: windows of `window_tokens` visual tokens, the last one shorter, one ratio.

    Args:
        num_frames: sampled frames F (>= 1).
        tokens_per_frame: 144 for Video-XL.
        window_tokens: `beacon_window` (1440 = 10 frames for Video-XL); must be a multiple of
            `tokens_per_frame` so that windows start on frame boundaries.
        ratio: visual tokens per VST (8 in Video-XL's demo, 16 in its needle-in-a-haystack runs).

    Raises:
        ValueError: `num_frames < 1`, a ratio that is not a positive integer, or a window size that
            is not a whole number of frames.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 1:
        raise ValueError(f"ratio must be a positive integer, got {ratio!r}")
    if num_frames < 1:
        raise ValueError(f"cannot plan a video with {num_frames} frames; need at least one frame")
    if window_tokens % tokens_per_frame:
        raise ValueError(
            f"beacon_window {window_tokens} is not a multiple of {tokens_per_frame} tokens per frame"
        )
    per = window_tokens // tokens_per_frame
    windows = tuple(
        PlannedWindow(s, min(s + per, num_frames), ratio) for s in range(0, num_frames, per)
    )
    return ChunkPlan(windows, tokens_per_frame, "fixed", {"ratio": ratio, "window_tokens": window_tokens})
