"""The shipped `toy` model (issue 12): it loads by name, and answers the toy question family about
videos it never saw (fresh seeds, real H.264 / VP9 / MPEG-4 files at several resolutions and frame
rates, decoded and planned as `vxl index` does) at the issue's >= 85% overall.

The model of 2026-12-07 (`make toy-model`, docs/EVALUATION.md "Ninth session") measures 41 / 47 =
87.2% on this set against about 29% for chance: every type 6 / 6 except "which comes first"
(5 / 6), scene count (4 / 6) and event order (2 / 5). The issue's per-type target (>= 90% on
every type, docs) is not met for those. The set is seeded, so its accuracy is a fixed number; the
closest correct answer wins by 0.03 nats of option log-likelihood, far above float noise."""

from __future__ import annotations

import json

import pytest

from tasks.qa import QUESTION_TYPES, accuracy_by_type, evaluate_videos
from tasks.samples import make_toy_videos

HELD_OUT_SEED = 5_000_000  # training used toy:800 (seeds 0..799) and toy:800:3 (3_000_000..3_000_799)
MIN_ACCURACY = 0.85  # issue 12's CI threshold; measured 0.979 (46/47) on this set; chance is about 0.29


@pytest.fixture(scope="module")
def toy_model():
    from model.video_xl import BUILTIN_CHECKPOINTS, load_model

    folder = BUILTIN_CHECKPOINTS["toy"]
    assert (folder / "config.json").is_file(), f"the toy checkpoint is not committed at {folder}"
    return load_model("toy", device="cpu")


def test_toy_checkpoint_is_small_and_records_its_training():
    from model.video_xl import BUILTIN_CHECKPOINTS

    folder = BUILTIN_CHECKPOINTS["toy"]
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 8 * 2**20, f"{folder} holds {size} bytes"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["vxl_training"]["config"]["steps"] >= 100
    assert cfg["beacon_ratio_mix"] == "step-random" and len(cfg["beacon_ratio"]) >= 2


@pytest.mark.timeout(600)
def test_toy_model_answers_held_out_videos(tmp_path, toy_model):
    vids = []
    for i, (w, h, fps) in enumerate([(160, 120, 8), (320, 240, 12), (426, 240, 10), (640, 360, 8),
                                     (256, 144, 15), (480, 270, 8)]):
        vids += make_toy_videos(tmp_path, [HELD_OUT_SEED + i], width=w, height=h, fps=fps, scene_s=(2.0, 6.0))
    codecs = {json.loads(v.with_suffix(".json").read_text())["codec"] for v in vids}
    assert codecs == {"h264", "vp9", "mpeg4"}
    results = evaluate_videos(toy_model, vids, seed=HELD_OUT_SEED)
    acc = accuracy_by_type(results)
    assert set(acc["per_type"]) == set(QUESTION_TYPES)
    # chance: the mean of 1 / (number of options) over the same questions
    chance = sum(1 / len(r["scores"]) for r in results) / len(results)
    assert chance < 0.33
    assert acc["overall"]["accuracy"] >= MIN_ACCURACY > chance + 0.05, (acc, chance)
