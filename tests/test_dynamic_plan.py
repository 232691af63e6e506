"""The `dynamic` planner (model/dynamic.py): depth scores, boundaries, windows, ratio allocation.

Embeddings are synthetic: orthogonal scene directions plus small noise from a local numpy Generator,
so the cuts are known exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.dynamic import (
    DEFAULT_RATIOS,
    adjacent_similarity,
    depth_scores,
    depth_threshold,
    find_boundaries,
    plan_dynamic,
    window_mean_embeddings,
)
from model.plan import PLANNERS, ChunkPlan, plan_fixed

TPF = 144  # Video-XL visual tokens per frame
WINDOW = 1440  # beacon_window: 10 frames


def scene_embeddings(lengths, noise, *, dim=32, seed=0) -> np.ndarray:
    """(sum(lengths), dim) float32: scene k is basis vector k plus Gaussian noise `noise[k]`."""
    rng = np.random.default_rng(seed)
    noise = noise if isinstance(noise, list | tuple) else [noise] * len(lengths)
    rows = []
    for k, (n, s) in enumerate(zip(lengths, noise, strict=True)):
        base = np.zeros(dim)
        base[k] = 1.0
        rows.append(base + rng.normal(scale=s, size=(n, dim)))
    return np.concatenate(rows).astype(np.float32)


def naive_depth(sim):
    """VideoLLaMB's `cal_depth_score`, written as loops (the reference for `depth_scores`)."""
    out = []
    for i in range(len(sim)):
        lpeak = sim[i]
        for j in range(i - 1, -1, -1):
            if sim[j] >= lpeak:
                lpeak = sim[j]
            else:
                break
        rpeak = sim[i]
        for j in range(i + 1, len(sim)):
            if sim[j] >= rpeak:
                rpeak = sim[j]
            else:
                break
        out.append(lpeak + rpeak - 2 * sim[i])
    return np.array(out)


def check_plan(plan: ChunkPlan, num_frames: int) -> None:
    """Invariants every dynamic plan must hold (the documented budget bound included)."""
    plan.validate(num_frames, WINDOW)
    assert plan.planner == "dynamic"
    budget = num_frames * TPF // plan.params["target_ratio"]
    assert plan.extras["budget"] == budget
    assert plan.extras["num_vst"] == plan.num_vst
    assert budget - len(plan.windows) <= plan.num_vst <= budget
    for w, (n_vst, carry) in zip(plan.windows, plan.layout(), strict=True):
        assert n_vst > 0 or w.num_frames * TPF + carry < w.ratio
    assert len(plan.extras["similarity"]) == len(plan.extras["depth"]) == num_frames - 1
    json.dumps(plan.to_dict(), allow_nan=False)  # JSON-serialisable, no NaN


# --- helpers -----------------------------------------------------------------------------------


def test_adjacent_similarity_values():
    emb = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
    np.testing.assert_allclose(adjacent_similarity(emb), [1.0, 0.0, 0.0])
    assert adjacent_similarity(emb[:1]).shape == (0,)


def test_depth_scores_hand_example_and_reference():
    np.testing.assert_allclose(depth_scores([0.9, 0.8, 0.9]), [0.0, 0.2, 0.0], atol=1e-12)
    # plateau: climbing continues while similarity does not decrease
    np.testing.assert_allclose(depth_scores([0.5, 0.9, 0.9, 0.6, 0.7]), [0.4, 0.0, 0.0, 0.4, 0.0], atol=1e-12)
    rng = np.random.default_rng(3)
    for n in (1, 2, 5, 50):
        sim = np.round(rng.uniform(0.5, 1.0, n), 2)  # rounding makes ties common
        np.testing.assert_allclose(depth_scores(sim), naive_depth(sim), atol=1e-12)
    assert depth_scores([]).shape == (0,)


def test_find_boundaries_at_known_cuts_of_a_similarity_sequence():
    sim = np.full(39, 0.95)
    sim[[9, 19, 29]] = [0.4, 0.5, 0.3]  # cuts between frames 9|10, 19|20, 29|30
    sim[[3, 14, 25]] = [0.93, 0.94, 0.92]  # small wobbles inside shots
    depth = depth_scores(sim)
    assert find_boundaries(depth, 0.5) == [10, 20, 30]
    assert depth_threshold(depth, 0.5) == pytest.approx(depth.mean() + 0.5 * depth.std())
    assert find_boundaries([], 0.5) == [] and depth_threshold([], 0.5) is None
    assert find_boundaries(np.zeros(10), 0.5) == []  # zero variance
    assert find_boundaries([0.0, 0.005, 0.0], 0.5) == []  # below the noise floor
    assert find_boundaries([0.0, 0.005, 0.0], 0.5, min_depth=0.0) == [2]  # the paper's rule


# --- plans from synthetic embeddings with known cuts -------------------------------------------


def test_boundaries_exactly_at_cuts_and_windows_bounded():
    lengths = [13, 17, 25, 5]  # cuts at 13, 30, 55
    emb = scene_embeddings(lengths, 0.05)
    plan = plan_dynamic(emb, tokens_per_frame=TPF, window_tokens=WINDOW)
    check_plan(plan, 60)
    assert plan.extras["boundaries"] == [13, 30, 55]
    starts = [w.frame_start for w in plan.windows]
    assert {13, 30, 55} <= set(starts)
    # long segments are split into near-equal windows: 13 -> 7+6, 17 -> 9+8, 25 -> 9+8+8, 5
    assert [w.num_frames for w in plan.windows] == [7, 6, 9, 8, 9, 8, 8, 5]
    assert plan.num_vst == plan.extras["budget"] == 60 * TPF // 8


def test_budget_exact_for_each_target_ratio():
    emb = scene_embeddings([13, 17, 25, 5], [0.01, 0.3, 0.05, 0.6])
    for target in DEFAULT_RATIOS:
        plan = plan_dynamic(emb, tokens_per_frame=TPF, window_tokens=WINDOW, target_ratio=target)
        check_plan(plan, 60)
        assert plan.num_vst == 60 * TPF // target


def test_budget_bound_on_random_plans():
    """The documented guarantee `budget - W <= VSTs <= budget` on many random videos and settings."""
    rng = np.random.default_rng(11)
    exact = 0
    for _ in range(40):
        num = int(rng.integers(1, 120))
        lengths = np.diff(np.sort(np.r_[0, rng.choice(np.arange(1, num), min(num - 1, 4), replace=False), num]))
        lengths = [int(n) for n in lengths if n > 0]
        emb = scene_embeddings(lengths, float(rng.uniform(0.01, 0.5)), seed=int(rng.integers(1 << 30)))
        plan = plan_dynamic(emb, tokens_per_frame=TPF, window_tokens=WINDOW, target_ratio=int(rng.choice([4, 8, 16])))
        check_plan(plan, num)
        exact += plan.num_vst == plan.extras["budget"]
    assert exact >= 38


def test_smallest_ratios_to_windows_that_change_most():
    # static shot, very dynamic shot, mildly dynamic shot, static shot; 10 frames each (one window)
    emb = scene_embeddings([10, 10, 10, 10], [0.001, 0.1, 0.04, 0.002])
    plan = plan_dynamic(emb, tokens_per_frame=TPF, window_tokens=WINDOW)
    check_plan(plan, 40)
    assert plan.extras["boundaries"] == [10, 20, 30]
    ratios = [w.ratio for w in plan.windows]
    change = plan.extras["window_change"]
    assert change[1] > change[2] > change[3] > change[0]
    assert plan.extras["adjusted_windows"] == []
    assert ratios == [16, 4, 8, 16]  # 90 + 360 + 180 + 90 = 720 = 40 * 144 // 8
    assert plan.num_vst == 720
    # monotone: more change never gets a coarser ratio
    for i in range(4):
        for j in range(4):
            if change[i] > change[j]:
                assert ratios[i] <= ratios[j]


def test_plan_is_deterministic_and_input_type_independent():
    emb = scene_embeddings([12, 9, 20], [0.1, 0.4, 0.02], seed=5)
    state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    a = plan_dynamic(emb, tokens_per_frame=TPF, window_tokens=WINDOW)
    b = plan_dynamic(emb.copy(), tokens_per_frame=TPF, window_tokens=WINDOW)
    c = plan_dynamic(torch.from_numpy(emb), tokens_per_frame=TPF, window_tokens=WINDOW)
    assert a.to_dict() == b.to_dict() == c.to_dict()
    assert torch.equal(state, torch.get_rng_state())
    assert np.array_equal(np_state, np.random.get_state()[1])
    assert ChunkPlan.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_registered_and_params_recorded():
    assert PLANNERS["dynamic"] is plan_dynamic
    plan = plan_dynamic(scene_embeddings([5], 0.1), tokens_per_frame=TPF, window_tokens=WINDOW)
    assert plan.params == {
        "tokens_per_frame": TPF,
        "window_tokens": WINDOW,
        "target_ratio": 8,
        "ratios": [2, 4, 8, 16],
        "alpha": 0.5,
        "min_depth": 0.01,
    }
    assert set(plan.extras) == {
        "similarity", "depth", "boundaries", "threshold", "window_change", "budget", "num_vst",
        "adjusted_windows",
    }


# --- degenerate videos -------------------------------------------------------------------------


def test_one_frame():
    plan = plan_dynamic(np.ones((1, 8), np.float32), tokens_per_frame=TPF, window_tokens=WINDOW)
    check_plan(plan, 1)
    assert [(w.frame_start, w.frame_end, w.ratio) for w in plan.windows] == [(0, 1, 8)]
    assert plan.extras["similarity"] == [] and plan.extras["boundaries"] == []
    assert plan.extras["threshold"] is None
    assert plan.num_vst == 18


@pytest.mark.parametrize("kind", ["identical", "zeros"])
def test_identical_frames_give_fixed_like_plan(kind):
    emb = np.tile(np.arange(1, 9, dtype=np.float32), (25, 1)) if kind == "identical" else np.zeros((25, 8))
    plan = plan_dynamic(emb, tokens_per_frame=TPF, window_tokens=WINDOW)
    check_plan(plan, 25)
    assert plan.extras["boundaries"] == []
    assert [(w.frame_start, w.frame_end, w.ratio) for w in plan.windows] == [(0, 9, 8), (9, 17, 8), (17, 25, 8)]
    assert plan.num_vst == plan_fixed(25, tokens_per_frame=TPF, window_tokens=WINDOW).num_vst
    assert all(np.isfinite(plan.extras["depth"])) and np.isfinite(plan.extras["threshold"])


def test_no_cuts_noisy_shot():
    plan = plan_dynamic(scene_embeddings([30], 0.001, seed=2), tokens_per_frame=TPF, window_tokens=WINDOW)
    check_plan(plan, 30)
    assert plan.extras["boundaries"] == []
    assert [w.num_frames for w in plan.windows] == [10, 10, 10]


def test_small_token_counts_and_odd_windows():
    # 3 tokens per frame, windows of 2 frames: windows hold fewer tokens than the coarsest ratio
    emb = scene_embeddings([7, 4], 0.1)
    plan = plan_dynamic(emb, tokens_per_frame=3, window_tokens=6, target_ratio=4)
    plan.validate(11, 6)
    assert 33 // 4 - len(plan.windows) <= plan.num_vst <= 33 // 4


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "emb, match",
    [
        (np.zeros((0, 8)), "0 frames"),
        (np.zeros(8), r"shape \(F, E\)"),
        (np.zeros((2, 3, 4)), r"shape \(F, E\)"),
        (np.zeros((3, 0)), "width 0"),
        (np.array([[0.0, np.nan]]), "NaN"),
        ([[1.0, 2.0]], "torch.Tensor or numpy"),
    ],
)
def test_bad_embeddings(emb, match):
    with pytest.raises(ValueError, match=match):
        plan_dynamic(emb, tokens_per_frame=TPF, window_tokens=WINDOW)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"window_tokens": 1000}, "not a multiple"),
        ({"target_ratio": 32}, "outside the allowed ratios"),
        ({"target_ratio": 1}, "outside the allowed ratios"),
        ({"target_ratio": 0}, "positive integer"),
        ({"ratios": ()}, "must not be empty"),
        ({"ratios": (4, 4, 8)}, "distinct"),
        ({"ratios": (0, 8)}, "positive integer"),
        ({"alpha": float("nan")}, "finite"),
        ({"tokens_per_frame": 0}, "positive integer"),
    ],
)
def test_bad_parameters(kw, match):
    args = {"tokens_per_frame": TPF, "window_tokens": WINDOW, **kw}
    with pytest.raises(ValueError, match=match):
        plan_dynamic(np.ones((4, 8)), **args)


# --- window embeddings -------------------------------------------------------------------------


def test_window_mean_embeddings():
    emb = scene_embeddings([6, 8], 0.05)
    plan = plan_dynamic(emb, tokens_per_frame=TPF, window_tokens=WINDOW)
    out = window_mean_embeddings(plan, emb)
    assert out.dtype == np.float32 and out.shape == (len(plan.windows), 32)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    w0 = plan.windows[0]
    expect = unit[w0.frame_start : w0.frame_end].mean(0)
    np.testing.assert_allclose(out[0], expect / np.linalg.norm(expect), atol=1e-6)
    with pytest.raises(ValueError, match="covers 14 frames"):
        window_mean_embeddings(plan, emb[:10])
