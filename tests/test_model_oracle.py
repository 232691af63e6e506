"""The model is Video-XL: reproduce the outputs the original code computed (tests/data/oracle).

Tolerance from the oracle README: 1e-4 on logits, step logits and memory; greedy ids exact.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model import load_model
from model.plan import vst_positions

pytestmark = pytest.mark.fidelity

CASES = ["f4_r8", "f12_r8"]
TOL = 1e-4


@pytest.fixture(scope="module")
def oracle_vx(oracle_dir):
    return load_model(oracle_dir / "checkpoint", device="cpu")


def _case(oracle_dir, name):
    d = oracle_dir / "cases" / name
    return d, np.load(d / "frames.npy"), (d / "question.txt").read_text()


@pytest.mark.parametrize("name", CASES)
def test_prompt_tokens_match(oracle_vx, oracle_dir, name):
    d, _, q = _case(oracle_dir, name)
    shapes = json.loads((d / "memory_shapes.json").read_text())
    ids = shapes["prompt_input_ids_with_image_marker"]
    cut = ids.index(-200)
    assert oracle_vx._sink_ids == ids[:cut]
    from model.tokenizer import split_prompt

    assert oracle_vx._encode_text(split_prompt(q)[1]) == ids[cut + 1 :]
    assert (d / "prompt.txt").read_text().startswith(split_prompt(q)[0] + "<image>")


@pytest.mark.parametrize("name", CASES)
def test_image_features(oracle_vx, oracle_dir, name):
    d, frames, _ = _case(oracle_dir, name)
    ref = np.load(d / "image_features.npy")
    got = oracle_vx.vision_features(frames).numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < TOL


@pytest.mark.parametrize("name", CASES)
def test_vst_positions_match_original(oracle_dir, name):
    d, _, _ = _case(oracle_dir, name)
    windows = json.loads((d / "windows.json").read_text())["forward_prefill_windows"]
    video = [w for w in windows if w["n_placeholder"] > 0]
    assert video, "oracle has video windows"
    for w in video:
        mask = vst_positions(w["n_placeholder"], 8, w["remainder_in"])
        assert mask.shape[0] == w["window_len"]
        assert torch.nonzero(mask).flatten().tolist() == w["beacon_positions_in_window"]


@pytest.mark.parametrize("name", CASES)
def test_memory_logits_and_greedy_match_original(oracle_vx, oracle_dir, name):
    d, frames, q = _case(oracle_dir, name)
    case = json.loads((d / "case.json").read_text())
    plan = oracle_vx.plan(frames, ratio=case["beacon_ratio"][0])
    memory = oracle_vx.encode(frames, plan)

    ref = np.load(d / "memory_after_prompt.npz")
    kv = memory.kv().numpy()  # (L, 2, Hkv, T, D)
    s = memory.sink_tokens
    shapes = json.loads((d / "memory_shapes.json").read_text())
    assert s == shapes["sink_len_per_layer"][0] == 14
    assert memory.num_vst == shapes["beacons_in_memory_per_layer"][0]
    for layer in range(kv.shape[0]):
        for i, kind in enumerate("kv"):
            np.testing.assert_allclose(kv[layer, i, :, :s], ref[f"layer{layer}_sink_{kind}"][0], atol=TOL, rtol=0)
            np.testing.assert_allclose(kv[layer, i, :, s:], ref[f"layer{layer}_beacon_{kind}"][0], atol=TOL, rtol=0)

    logits = oracle_vx.next_token_logits(memory, q)
    assert logits.dtype == torch.float32 and logits.shape == (576,)
    np.testing.assert_allclose(logits.numpy(), np.load(d / "logits.npy"), atol=TOL, rtol=0)

    greedy = json.loads((d / "greedy_ids.json").read_text())["greedy_ids"]
    ans = oracle_vx.answer(memory, q, max_new_tokens=len(greedy))
    assert ans.token_ids == greedy


def test_step_logits_match_original(oracle_vx, oracle_dir):
    """Each greedy step's logits (the generation path through the cache) match the original's."""
    d, frames, q = _case(oracle_dir, "f12_r8")
    memory = oracle_vx.encode(frames, oracle_vx.plan(frames, ratio=8))
    ref = np.load(d / "greedy_step_logits.npy")  # (8, 576)
    ids = oracle_vx._question_ids(memory, q, ref.shape[0])
    with torch.inference_mode():
        cache, logits = oracle_vx._prefill(memory, ids)
        for step in range(ref.shape[0]):
            np.testing.assert_allclose(logits.numpy(), ref[step], atol=TOL, rtol=0)
            nxt = int(torch.argmax(logits))
            logits = oracle_vx.model.step(oracle_vx._embed_ids([nxt]), cache, logits_for_last=1)[0]
