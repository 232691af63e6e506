"""Bad input to the model: a ValueError that says what was expected."""

from __future__ import annotations

import numpy as np
import pytest

from model.plan import ChunkPlan, PlannedWindow


def _frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def memory(tiny_vx):
    f = _frames(2)
    return tiny_vx.encode(f, tiny_vx.plan(f))


def test_frames_of_wrong_dtype_shape_or_empty(tiny_vx):
    f = _frames(2)
    plan = tiny_vx.plan(2)
    with pytest.raises(ValueError, match="uint8"):
        tiny_vx.encode(f.astype(np.float32), plan)
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        tiny_vx.encode(f[..., :2], plan)
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        tiny_vx.encode(f[0], plan)
    with pytest.raises(ValueError, match="empty"):
        tiny_vx.encode(f[:0], plan)
    with pytest.raises(ValueError, match="empty"):
        tiny_vx.plan(f[:0])
    with pytest.raises(ValueError, match="uint8"):
        tiny_vx.encode(list(f), plan)


def test_plan_that_does_not_cover_the_frames(tiny_vx):
    f = _frames(3)
    with pytest.raises(ValueError, match="covers 2 frames but the video has 3"):
        tiny_vx.encode(f, tiny_vx.plan(2))
    with pytest.raises(ValueError, match="tokens per frame"):
        tiny_vx.encode(f, ChunkPlan((PlannedWindow(0, 3, 8),), 64))
    with pytest.raises(ValueError, match="timestamps"):
        tiny_vx.encode(f, tiny_vx.plan(3), timestamps=[0.0, 1.0])


def test_question_empty_or_over_the_context(tiny_vx, memory):
    with pytest.raises(ValueError, match="empty"):
        tiny_vx.answer(memory, "   ")
    long_q = "what " * (tiny_vx.config.max_position_embeddings + 10)
    with pytest.raises(ValueError, match="context limit 32768"):
        tiny_vx.next_token_logits(memory, long_q)
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny_vx.answer(memory, "q", max_new_tokens=0)
    with pytest.raises(ValueError, match="options"):
        tiny_vx.score_options(memory, "q", [])


def test_memory_from_another_model_is_refused(tiny_vx, memory):
    from dataclasses import replace

    other = replace(memory, fingerprint="0" * 64)
    with pytest.raises(ValueError, match="re-index"):
        tiny_vx.answer(other, "q")


def test_score_options_prefers_the_text_it_would_generate(tiny_vx, memory):
    ans = tiny_vx.answer(memory, "Name a colour.", max_new_tokens=3)
    text = tiny_vx.tokenizer.decode(ans.token_ids)
    scores = tiny_vx.score_options(memory, "Name a colour.", ["zzzz qqqq", text])
    assert scores[1] > scores[0]
    # scores do not depend on the order of the options: the cache is cropped back after each one
    again = tiny_vx.score_options(memory, "Name a colour.", [text, "zzzz qqqq"])
    assert again == [scores[1], scores[0]]
