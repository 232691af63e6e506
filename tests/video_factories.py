"""Factories for the video tests: sample videos, bad files, palette lookups."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.samples import BACKGROUNDS, COLORS, make_bad_files, make_sample_videos

PALETTE = {**{f"bg:{k}": v for k, v in BACKGROUNDS.items()}, **{f"fg:{k}": v for k, v in COLORS.items()}}


def sample_videos(out_dir: Path, count: int = 2, seconds: float = 20.0, seed: int = 0, **kw) -> list[Path]:
    """Sample videos (defaults: 320x240, 8 fps) in `out_dir`."""
    return make_sample_videos(out_dir, count=count, seconds=seconds, seed=seed, **kw)


def bad_files(out_dir: Path) -> dict[str, Path]:
    return make_bad_files(out_dir)


def nearest(rgb: np.ndarray, names: list[str] | None = None) -> str:
    """Name (`bg:<name>` or `fg:<name>`) of the palette colour nearest to `rgb` (L1)."""
    names = names or list(PALETTE)
    d = [np.abs(np.asarray(PALETTE[n], dtype=np.float64) - rgb).sum() for n in names]
    return names[int(np.argmin(d))]


def patch_mean(frame: np.ndarray, x: float, y: float, half: int = 2) -> np.ndarray:
    """Mean RGB (float64 (3,)) of the (2*half+1)^2 patch centred at pixel (x, y)."""
    xi, yi = int(round(x)), int(round(y))
    return frame[yi - half : yi + half + 1, xi - half : xi + half + 1].reshape(-1, 3).mean(0)


def corner_mean(frame: np.ndarray) -> np.ndarray:
    """Mean RGB of a 6x6 patch near the top-left corner (always background in sample videos)."""
    return frame[2:8, 2:8].reshape(-1, 3).mean(0)
