"""The `dynamic` chunk planner: scene-aware windows and per-window compression ratios.

Video-XL's paper (VIDEO_XL.md section 4) measures information density with CLIP image embeddings of
adjacent sampled frames and compresses fast-changing spans more finely; the released code does not
contain it, so this project defines the mapping to windows and ratios (DESIGN.md "Chunk planning"):

1. `adjacent_similarity`: `s_i = cos(f_i, f_{i+1})` for the F - 1 gaps between sampled frames.
2. `depth_scores`: `depth_i = lpeak_i + rpeak_i - 2 s_i`, where lpeak/rpeak climb left/right from gap
   `i` while the similarity does not decrease (TextTiling, Hearst 1997; VideoLLaMB's scene tiling).
3. `find_boundaries`: a new segment starts at frame `i + 1` where `depth_i > mean + alpha * std`
   (population std, alpha 0.5) and `depth_i > min_depth` (0.01, a noise floor; not in the paper).
4. Segments are cut into near-equal windows of at most `window_tokens // tokens_per_frame` frames.
5. `_allocate_ratios`: ratios from the allowed set so that the VST count (by the carry rule of
   `ChunkPlan.layout`) meets the budget `visual_tokens // target_ratio`, smallest ratios to the
   windows with the most change (mean `1 - s_i` inside the window). See `_allocate_ratios`.

Pure numpy/torch; deterministic (no RNG; ties broken by window index). Shapes: F frames, E embedding
width, W windows.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from model.plan import ChunkPlan, PlannedWindow, register_planner

DEFAULT_RATIOS = (2, 4, 8, 16)
"""Allowed compression ratios (visual tokens per VST)."""

MIN_DEPTH = 0.01
"""Depth scores at or below this (cosine-similarity units) are never boundaries. The paper's
threshold `mean + alpha * std` is relative only, so on a shot without cuts it would cut at noise
dips (the tiny random CLIP on a noisy static shot: depths <= 5e-4, 8 spurious cuts in 30 frames);
real cuts score 0.2 or more (tiny CLIP on colour cuts: 0.43-0.57). This floor is this project's
addition, not the paper's."""

_CHANGE_DIGITS = 12  # window change scores are rounded so that float summation order cannot reorder ties
_PRIORITY_EPS = 1e-9  # keeps zero-change windows ordered by their ratio, then index


def _as_matrix(embeddings: torch.Tensor | np.ndarray) -> np.ndarray:
    """float64 (F, E) copy of `embeddings`, validated."""
    if isinstance(embeddings, torch.Tensor):
        x = embeddings.detach().to("cpu", torch.float64).numpy()
    elif isinstance(embeddings, np.ndarray):
        if not (np.issubdtype(embeddings.dtype, np.floating) or np.issubdtype(embeddings.dtype, np.integer)):
            raise ValueError(f"embeddings must be a real-valued array, got dtype {embeddings.dtype}")
        x = embeddings.astype(np.float64)
    else:
        raise ValueError(f"embeddings must be a torch.Tensor or numpy array (F, E), got {type(embeddings).__name__}")
    if x.ndim != 2:
        raise ValueError(f"embeddings must have shape (F, E), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("cannot plan a video with 0 frames: embeddings have shape (0, E)")
    if x.shape[1] == 0:
        raise ValueError(f"embeddings have width 0: shape {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    return x


def _as_vector(values: np.ndarray | torch.Tensor | list, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        v = values.detach().to("cpu", torch.float64).numpy()
    else:
        v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(v.shape)}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return v


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def adjacent_similarity(embeddings: torch.Tensor | np.ndarray) -> np.ndarray:
    """Cosine similarity of adjacent frames, `s_i = cos(f_i, f_{i+1})` (VIDEO_XL.md section 4).

    Args:
        embeddings: (F, E) frame embeddings (need not be normalised), F >= 1.

    Returns:
        float64 (F - 1,) in [-1, 1]; empty for one frame. An all-zero embedding has similarity 0.

    Raises:
        ValueError: not 2-D, no frames, zero width, or non-finite values.
    """
    unit = _unit_rows(_as_matrix(embeddings))  # (F, E)
    sim = np.einsum("fe,fe->f", unit[:-1], unit[1:])  # (F - 1,)
    return np.clip(sim, -1.0, 1.0)


def depth_scores(similarity: np.ndarray | torch.Tensor | list) -> np.ndarray:
    """TextTiling depth of each gap: `depth_i = lpeak_i + rpeak_i - 2 s_i` (VIDEO_XL.md section 4).

    `lpeak_i` is reached by moving left from gap `i` while the similarity does not decrease
    (`s_{j-1} >= s_j`), `rpeak_i` likewise to the right; this is VideoLLaMB's `cal_depth_score`,
    computed in O(F) (`lpeak_i = lpeak_{i-1}` when `s_{i-1} >= s_i`, else `s_i`).

    Args:
        similarity: (F - 1,) adjacent similarities.

    Returns:
        float64 (F - 1,), all >= 0; zero where a gap is its own left and right peak.

    Raises:
        ValueError: not 1-D or non-finite values.
    """
    s = _as_vector(similarity, "similarity")
    n = len(s)
    lpeak, rpeak = s.copy(), s.copy()
    for i in range(1, n):
        if s[i - 1] >= s[i]:
            lpeak[i] = lpeak[i - 1]
    for i in range(n - 2, -1, -1):
        if s[i + 1] >= s[i]:
            rpeak[i] = rpeak[i + 1]
    return lpeak + rpeak - 2.0 * s


def depth_threshold(depth: np.ndarray | torch.Tensor | list, alpha: float = 0.5) -> float | None:
    """`mean(depth) + alpha * std(depth)` (population std); None when there are no gaps."""
    d = _as_vector(depth, "depth")
    if not len(d):
        return None
    return float(d.mean() + alpha * d.std())


def find_boundaries(
    depth: np.ndarray | torch.Tensor | list, alpha: float = 0.5, *, min_depth: float = MIN_DEPTH
) -> list[int]:
    """Frames where a new segment starts: `i + 1` for each gap with `depth_i > mean + alpha * std`.

    Gaps with `depth_i <= min_depth` never count, so identical frames (zero variance) and noise
    inside a shot give no boundaries.

    Args:
        depth: (F - 1,) depth scores from `depth_scores`.
        alpha: threshold in standard deviations above the mean (0.5 in the paper).
        min_depth: absolute floor, cosine-similarity units (`MIN_DEPTH`; 0 gives the paper's rule).

    Returns:
        increasing frame indices in `[1, F - 1]`.

    Raises:
        ValueError: not 1-D, non-finite values, or a non-finite alpha.
    """
    if not (math.isfinite(alpha) and math.isfinite(min_depth)):
        raise ValueError(f"alpha and min_depth must be finite, got {alpha!r}, {min_depth!r}")
    d = _as_vector(depth, "depth")
    threshold = depth_threshold(d, alpha)
    if threshold is None:
        return []
    hits = np.flatnonzero((d > threshold) & (d > min_depth))
    return [int(i) + 1 for i in hits]


def _split_segments(num_frames: int, boundaries: list[int], max_frames: int) -> list[tuple[int, int]]:
    """Segments `[a, b)` cut into `ceil(len / max_frames)` near-equal windows (longer ones first)."""
    edges = [0, *boundaries, num_frames]
    spans: list[tuple[int, int]] = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        length = b - a
        count = -(-length // max_frames)
        q, r = divmod(length, count)
        start = a
        for k in range(count):
            end = start + q + (1 if k < r else 0)
            spans.append((start, end))
            start = end
    return spans


def _window_change(spans: list[tuple[int, int]], similarity: np.ndarray) -> list[float]:
    """Mean `1 - s_i` over the gaps inside each window (gap i joins frames i and i + 1).

    A one-frame window has no inside gap and takes the mean over the gaps on either side (0 for a
    one-frame video); a one-frame segment between two cuts therefore scores high and gets a fine
    ratio (a flash shot; it costs few VSTs). Rounded to 12 digits so ties do not depend on
    summation order.
    """
    dissim = 1.0 - similarity  # (F - 1,)
    out = []
    for a, b in spans:
        if b - a >= 2:
            val = float(dissim[a : b - 1].mean())
        else:
            around = dissim[max(a - 1, 0) : min(a + 1, len(dissim))]
            val = float(around.mean()) if len(around) else 0.0
        out.append(round(val, _CHANGE_DIGITS))
    return out


def _make_plan(spans, ratios, tokens_per_frame, **kw) -> ChunkPlan:
    windows = tuple(PlannedWindow(a, b, int(r)) for (a, b), r in zip(spans, ratios, strict=True))
    return ChunkPlan(windows, tokens_per_frame, "dynamic", **kw)


def _allocate_ratios(
    spans: list[tuple[int, int]],
    change: list[float],
    tokens_per_frame: int,
    ratios: tuple[int, ...],
    target_ratio: int,
) -> tuple[list[int], list[int]]:
    """Ratios per window whose VST count (carry rule, `ChunkPlan.layout`) meets the budget.

    `budget = visual_tokens // target_ratio`, the `fixed` planner's count at `target_ratio`.

    1. Every window starts at the coarsest ratio. Its VST count `floor(V / max(ratios))` is
       `<= budget` because `target_ratio <= max(ratios)`.
    2. Greedy refinement: repeatedly take the window with the highest priority
       `(change + 1e-9) * ratio` (ties: coarser ratio first, then lower index) and move it to the next
       smaller allowed ratio if the plan's VST count stays `<= budget`; otherwise freeze it. With
       this priority the VST density `1 / ratio` grows with the window's change (densities end up
       roughly proportional to change, within the factor-2 steps of the set), and equal-change
       windows are refined level by level (identical frames -> every window at `target_ratio` when
       it is in the set).
    3. Exact fit: while the count is below `budget`, one more window (tried in priority order: most
       change first; each window at most once) gets any integer ratio between `min(ratios)` and its
       current ratio: the first that hits `budget` exactly, else the one that brings the count
       closest to it without exceeding it. Stops when nothing improves.
    4. Fallback: if the count is still more than `num_windows` below `budget`, every window gets
       `target_ratio` (exact by the carry rule). Only seen with a `target_ratio` between set
       members (e.g. 3 with {2, 4, ...}): 16 of 2,000 random cases with targets 3/5/6/12; never
       with a target in the set.

    Guarantee: `budget - num_windows <= count <= budget`. Measured on a 2,000-case random sweep
    (F 1..400, several window sizes) with `target_ratio` in the set: 98.7 % exact, the rest at most
    7 VSTs short, at most 2 custom windows, no fallback.

    Returns:
        (ratio per window, indices of the windows whose ratio was set by step 3 or 4, in order).
    """
    budget = sum(b - a for a, b in spans) * tokens_per_frame // target_ratio
    order = sorted(ratios)
    level = [len(order) - 1] * len(spans)
    frozen = [False] * len(spans)

    def count(levels: list[int]) -> int:
        return _make_plan(spans, [order[lv] for lv in levels], tokens_per_frame).num_vst

    current = count(level)
    while current < budget:
        cands = [w for w in range(len(spans)) if not frozen[w] and level[w] > 0]
        if not cands:
            break
        w = min(cands, key=lambda w: (-(change[w] + _PRIORITY_EPS) * order[level[w]], -order[level[w]], w))
        level[w] -= 1
        trial = count(level)
        if trial <= budget:
            current = trial
        else:
            level[w] += 1
            frozen[w] = True

    rs = [order[lv] for lv in level]
    adjusted: list[int] = []
    by_priority = sorted(range(len(spans)), key=lambda w: (-(change[w] + _PRIORITY_EPS), w))
    while current < budget:
        best = (current, -1, 0)
        for w in by_priority:
            if w in adjusted:
                continue
            for r in range(rs[w] - 1, order[0] - 1, -1):
                trial = _make_plan(spans, [*rs[:w], r, *rs[w + 1 :]], tokens_per_frame).num_vst
                if trial > budget:
                    break
                if trial > best[0]:
                    best = (trial, w, r)
                if trial == budget:
                    break
            if best[0] == budget:
                break
        if best[1] < 0:
            break
        current, w, rs[w] = best[0], best[1], best[2]
        adjusted.append(w)
    if budget - current > len(spans):
        # 4. The set cannot express the budget (target between set members, odd window sizes):
        # uniform `target_ratio` meets it exactly by the carry rule (the `fixed` planner's count).
        rs, adjusted = [target_ratio] * len(spans), list(range(len(spans)))
    return rs, adjusted


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@register_planner("dynamic")
def plan_dynamic(
    embeddings: torch.Tensor | np.ndarray,
    *,
    tokens_per_frame: int,
    window_tokens: int,
    target_ratio: int = 8,
    ratios: tuple[int, ...] | list[int] = DEFAULT_RATIOS,
    alpha: float = 0.5,
    min_depth: float = MIN_DEPTH,
) -> ChunkPlan:
    """Scene-aware windows and per-window ratios from frame embeddings (DESIGN.md "Chunk planning").

    Args:
        embeddings: (F, E) CLIP image embeddings of the F sampled frames (`ClipEmbedder.embed_images`),
            torch or numpy, any float dtype, F >= 1.
        tokens_per_frame: visual tokens per frame after pooling (144 for Video-XL).
        window_tokens: `beacon_window` in visual tokens (1440 for Video-XL); a multiple of
            `tokens_per_frame`. No window holds more.
        target_ratio: average ratio; the VST budget is `F * tokens_per_frame // target_ratio`, the
            count the `fixed` planner gives at this ratio. Must lie in `[min(ratios), max(ratios)]`.
        ratios: allowed ratios (visual tokens per VST), distinct positive integers. To meet the
            budget exactly, usually one window (rarely a few) gets another integer ratio in that
            range (`_allocate_ratios`); they are listed in `extras["adjusted_windows"]`.
        alpha: boundary threshold `mean + alpha * std` of the depth scores (0.5 in the paper).
        min_depth: depth floor for a boundary (`MIN_DEPTH`, cosine-similarity units; 0 = paper).

    Returns:
        `ChunkPlan(planner="dynamic")`; `params`: tokens_per_frame, window_tokens, target_ratio,
        ratios, alpha, min_depth; `extras` (JSON lists/numbers): `similarity` (F - 1 floats),
        `depth` (F - 1), `boundaries` (frames starting a segment, excluding 0), `threshold`
        (float, None for one frame), `window_change` (W floats), `budget` (VSTs), `num_vst`,
        `adjusted_windows` (indices given a custom ratio, usually zero or one).

    Raises:
        ValueError: empty or non-(F, E) embeddings, non-finite values, bad sizes or ratios,
            `target_ratio` outside the ratio range.
    """
    x = _as_matrix(embeddings)
    _check_positive_int(tokens_per_frame, "tokens_per_frame")
    _check_positive_int(window_tokens, "window_tokens")
    _check_positive_int(target_ratio, "target_ratio")
    if window_tokens % tokens_per_frame:
        raise ValueError(f"beacon_window {window_tokens} is not a multiple of {tokens_per_frame} tokens per frame")
    ratios = tuple(ratios)
    if not ratios:
        raise ValueError("ratios must not be empty")
    for r in ratios:
        _check_positive_int(r, "each ratio")
    if len(set(ratios)) != len(ratios):
        raise ValueError(f"ratios must be distinct, got {ratios}")
    ratios = tuple(sorted(int(r) for r in ratios))
    if not ratios[0] <= target_ratio <= ratios[-1]:
        raise ValueError(f"target_ratio {target_ratio} is outside the allowed ratios {list(ratios)}")
    for name, value in (("alpha", alpha), ("min_depth", min_depth)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")

    num_frames = x.shape[0]
    sim = adjacent_similarity(x)  # (F - 1,)
    depth = depth_scores(sim)  # (F - 1,)
    threshold = depth_threshold(depth, alpha)
    boundaries = find_boundaries(depth, alpha, min_depth=min_depth)
    spans = _split_segments(num_frames, boundaries, window_tokens // tokens_per_frame)
    change = _window_change(spans, sim)
    budget = num_frames * tokens_per_frame // int(target_ratio)
    chosen, adjusted = _allocate_ratios(spans, change, tokens_per_frame, ratios, int(target_ratio))
    params = {
        "tokens_per_frame": int(tokens_per_frame),
        "window_tokens": int(window_tokens),
        "target_ratio": int(target_ratio),
        "ratios": list(ratios),
        "alpha": float(alpha),
        "min_depth": float(min_depth),
    }
    plan = _make_plan(spans, chosen, int(tokens_per_frame), params=params)
    plan.extras.update(
        similarity=[float(v) for v in sim],
        depth=[float(v) for v in depth],
        boundaries=boundaries,
        threshold=threshold,
        window_change=change,
        budget=int(budget),
        num_vst=int(plan.num_vst),
        adjusted_windows=adjusted,
    )
    return plan


def window_mean_embeddings(plan: ChunkPlan, embeddings: torch.Tensor | np.ndarray) -> np.ndarray:
    """Mean of the L2-normalised frame embeddings of each window, L2-normalised again.

    Args:
        plan: a plan covering exactly the F frames of `embeddings`.
        embeddings: (F, E) frame embeddings.

    Returns:
        float32 (W, E), one unit row per window (a window of all-zero embeddings stays zero).

    Raises:
        ValueError: bad embeddings, or a plan that does not cover F frames.
    """
    unit = _unit_rows(_as_matrix(embeddings))  # (F, E)
    plan.validate(unit.shape[0])
    means = np.stack([unit[w.frame_start : w.frame_end].mean(axis=0) for w in plan.windows])  # (W, E)
    return _unit_rows(means).astype(np.float32)
